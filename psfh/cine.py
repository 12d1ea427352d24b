"""`python -m psfh.cine`: the same command as `psfh-cine` (:mod:`psfh.cli.cine`)."""

from psfh.cli.cine import main

if __name__ == "__main__":
    raise SystemExit(main())
