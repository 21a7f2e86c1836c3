"""`python -m mobiface_tf.to_tflite`: the to_tflite command (console script mobiface-to-tflite), run by mobiface_tf.cli.

Its flags and main are in mobiface_tf/commands/to_tflite.py. Its library is the mobiface_tf/export/ package.
"""
if __name__ == "__main__":
    from mobiface_tf import cli

    cli.to_tflite()
