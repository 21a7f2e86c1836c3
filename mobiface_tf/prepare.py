"""`python -m mobiface_tf.prepare`: the prepare command (console script mobiface-prepare), run by mobiface_tf.cli.

Its flags and main are in mobiface_tf/commands/prepare.py. Its library is mobiface_tf/data/prepare.py.
"""
if __name__ == "__main__":
    from mobiface_tf import cli

    cli.prepare()
