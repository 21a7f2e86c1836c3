"""`python -m mobiface_tf.import_model`: the import_model command (console script mobiface-import-model), run by
mobiface_tf.cli. Its flags and main are in mobiface_tf/commands/import_model.py; its library is mobiface_tf/importer/.
"""
if __name__ == "__main__":
    from mobiface_tf import cli

    cli.import_model()
