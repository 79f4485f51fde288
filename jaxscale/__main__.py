"""`python -m jaxscale ...` runs the command line (see `jaxscale.training.cli`)."""

from jaxscale.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
