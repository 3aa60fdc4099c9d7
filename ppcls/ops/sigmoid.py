"""The sigmoid of the squeeze-and-excitation gate, recordable in both of Paddle's program
formats.

In Paddle 3.3.1 `F.sigmoid` calls the PIR operator directly, so it cannot be recorded in a
legacy program (what Paddle Inference's OpenVINO engine reads; ppcls/export records one
under `paddle.pir_utils.OldIrGuard`). `sigmoid` appends the legacy `sigmoid` operator
while a legacy program is being recorded and is `F.sigmoid` itself everywhere else
(dygraph, PIR programs), so what it computes is F.sigmoid's, bit for bit.
"""

import paddle
import paddle.nn.functional as F
from paddle.base.layer_helper import LayerHelper


def recording_legacy_program():
    return not paddle.in_dynamic_mode() and not paddle.framework.use_pir_api()


def sigmoid(x):
    if not recording_legacy_program():
        return F.sigmoid(x)
    helper = LayerHelper("sigmoid")
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op(type="sigmoid", inputs={"X": [x]}, outputs={"Out": [out]})
    return out
