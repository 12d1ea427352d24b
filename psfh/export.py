"""`python -m psfh.export`: the same command as `psfh-export` (:mod:`psfh.cli.export`)."""

from psfh.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
