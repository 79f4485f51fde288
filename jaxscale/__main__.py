"""`python -m jaxscale ...` runs the command line (see `jaxscale.cli`)."""

from jaxscale.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
