"""`python -m emo_slice ...` (and `torchrun ... -m emo_slice pretrain ...`): the same as `emo-slice ...`."""

from emo_slice.cli import main

if __name__ == "__main__":
    main()
