"""`python -m mobiface_tf.bench_identify`: the bench_identify command (console script mobiface-bench-identify),
run by mobiface_tf.cli.

Its flags and main are in mobiface_tf/commands/bench_identify.py. Its library is the mobiface_tf/megaface/ package.
"""
if __name__ == "__main__":
    from mobiface_tf import cli

    cli.bench_identify()
