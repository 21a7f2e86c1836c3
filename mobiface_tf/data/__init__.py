"""Face data: sources (image folders, RecordIO), TFRecord I/O, the tf.data pipeline, synthetic identities."""
