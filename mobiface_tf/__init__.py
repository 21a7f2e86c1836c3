"""mobiface_tf: MobiFace (Duong et al., 2018) in TensorFlow 2.21 / Keras 3."""
__version__ = "0.1.0"
