"""Pure CPU stages: read, chunk, translate/select frames, write results."""
