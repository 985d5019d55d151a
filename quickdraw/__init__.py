"""quickdraw-tune: a Ray Tune learning-rate x batch-size search for CNNs on Quick, Draw! bitmaps."""
