"""`python -m keras_mft`: the `keras-mft` command."""

from keras_mft.cli import main

raise SystemExit(main())
