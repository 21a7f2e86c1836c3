"""Verification sets, one module per protocol: LFW View 2 (`lfw`), CFP FF/FP (`cfp`) and InsightFace `.bin`
files (`binfile`, read with a restricted unpickler). The names below are re-exported for existing importers."""
from mobiface_tf.data.verification.binfile import BinRefused, check_image_sizes, read_bin  # noqa: F401
from mobiface_tf.data.verification.cfp import (PROTOCOLS as CFP_PROTOCOLS, check_protocol,  # noqa: F401
                                               read_cfp_pairs, read_pair_list)
from mobiface_tf.data.verification.lfw import (Pair, lfw_fold_identities, lfw_image_path,  # noqa: F401
                                               list_identities, read_lfw_pairs)
