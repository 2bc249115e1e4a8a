"""Which devices a run uses: parse --devices against what is visible."""

from __future__ import annotations

import torch

from virnucpro.errors import InputError


def resolve_devices(spec: str) -> list[torch.device]:
    """'auto' -> every visible GPU, else the CPU; or a comma list: 'cuda:0,cuda:2', 'cpu,cpu'."""
    spec = spec.strip().lower()
    if spec == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device(f"cuda:{i}") for i in range(count)] or [torch.device("cpu")]
    devices = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            device = torch.device(part)
        except RuntimeError:
            raise InputError(f"--devices: {part!r} is not a device (use auto, cpu, cuda:N)") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"--devices: {part} asked for, but no CUDA GPU is visible")
            index = 0 if device.index is None else device.index
            if index >= torch.cuda.device_count():
                raise InputError(
                    f"--devices: {part} does not exist ({torch.cuda.device_count()} GPU(s) visible)"
                )
            device = torch.device("cuda", index)
        elif device.type != "cpu":
            raise InputError(f"--devices: {part!r} is not supported (use auto, cpu, cuda:N)")
        devices.append(device)
    if not devices:
        raise InputError("--devices is empty")
    return devices
