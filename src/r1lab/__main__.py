"""`python -m r1lab ...`: the `r1lab` command, also as a module (what `torchrun -m r1lab` and
`accelerate launch -m r1lab` run)."""

from r1lab.cli import main

if __name__ == "__main__":
    main()
