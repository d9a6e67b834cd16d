"""Loading pretrained backbone weights: torchvision's weights API or a local file.

Nothing is downloaded silently in the wrong place and nothing falls back silently to random
weights: a backbone asked for weights either gets them or fails with a message that says where to
put the file. With ``weights=None`` (the default everywhere) a backbone starts from random
initialisation, which is what runs offline.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import torch
from torch import Tensor
from torchvision.models import get_weight

from segbench.errors import CheckpointError, ConfigError, MissingFileError, UnavailableError

log = logging.getLogger(__name__)


def load_state_dict(weights: str, enum_name: str) -> dict[str, Tensor]:
    """Return a state dict in torchvision's key format.

    Args:
        weights: either a path to a ``.pth`` file holding a torchvision-format state dict, or the
            name of a member of torchvision's weights enum (e.g. ``"IMAGENET1K_V1"``), which is
            loaded with torchvision's weights API (downloaded once to ``$TORCH_HOME``).
        enum_name: the torchvision enum the name belongs to, e.g. ``"VGG16_Weights"``.
    """
    path = Path(weights).expanduser()
    if path.suffix in {".pth", ".pt", ".ckpt"} or path.exists():
        if not path.is_file():
            raise MissingFileError(f"backbone weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        entry = get_weight(f"{enum_name}.{weights}")
    except (ValueError, KeyError) as err:
        raise ConfigError(
            f"unknown backbone weights {weights!r}: expected a file path or a member of "
            f"torchvision's {enum_name}"
        ) from err
    try:
        return entry.get_state_dict(progress=True)
    except OSError as err:  # URLError is an OSError: no network, proxy, DNS, ...
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
        if err.filename is not None and not isinstance(err, urllib.error.URLError):
            # Not the network: torch's download folder (by default in the home folder, which
            # may not be this user's to write) could not be made or written.
            raise ConfigError(
                f"{enum_name}.{weights}: torch's download folder {cache.parent} cannot be "
                f"written ({err}); set TORCH_HOME to a folder this user can write, or pass the "
                "weights file's path as the weights"
            ) from err
        raise UnavailableError(
            f"could not download {enum_name}.{weights} from {entry.url} ({err}). Offline, put the "
            f"file at {cache}, or pass its path as the weights, or set weights to null to start "
            "from random initialisation."
        ) from err


def on_meta_device() -> bool:
    """True while modules are being built on the meta device (``segbench summary``): weights
    have no values there, so pretrained weights are neither downloaded nor loaded."""
    return torch.empty(0).device.type == "meta"


def assign_state_dict(module: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the source and the mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{what}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if keys
        )
        raise CheckpointError(
            f"weights {source} do not fit {type(module).__name__} ({detail}). Pretrained weights "
            "exist for the full-width model only (width=1.0)."
        )
    module.load_state_dict(state)
    log.info("loaded %s into %s", source, type(module).__name__)
