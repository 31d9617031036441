"""``python -m hfcast``: the command line, as ``torchrun --nproc-per-node N -m hfcast train ...`` starts it."""

from hfcast.cli import main

if __name__ == "__main__":
    main()
