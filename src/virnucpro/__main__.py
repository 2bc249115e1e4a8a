from virnucpro.cli import entry

# Guarded: spawned worker processes re-import the parent's main module as __mp_main__.
if __name__ == "__main__":
    entry()
