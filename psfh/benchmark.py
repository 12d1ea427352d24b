"""`python -m psfh.benchmark`: the same command as `psfh-benchmark` (:mod:`psfh.cli.benchmark`)."""

from psfh.cli.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
