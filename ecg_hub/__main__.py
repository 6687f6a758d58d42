"""``python -m ecg_hub`` (also ``accelerate launch -m ecg_hub pretrain ...``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
