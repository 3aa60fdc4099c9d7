"""The engines without our harness: one exported model, one engine per process, timed with
time.perf_counter around run(). For checking tools/benchmark.py by hand:

    python tools/export_model.py -c configs/ImageNet/MnasNet/MnasNet_B1_x1_0.yaml -o Global.save_inference_dir=/tmp/b1
    python tools/export_onnx.py --model_dir /tmp/b1
    for i in 1 2 3; do for e in openvino onnxruntime; do python log/benchmark/plain_predictor.py /tmp/b1 $e; done; done
"""
import statistics
import sys
import time

import numpy as np

model_dir, engine = sys.argv[1], sys.argv[2]
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 1
x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
if engine == "onnxruntime":
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(f"{model_dir}/inference.onnx", options)

    def run():
        return session.run(None, {session.get_inputs()[0].name: x})
else:
    from paddle import inference

    config = inference.Config(f"{model_dir}/inference.pdmodel", f"{model_dir}/inference.pdiparams")
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(2)
    config.enable_new_ir(False)
    config.enable_openvino_engine(inference.PrecisionType.Float32)
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])

    def run():
        handle.reshape(x.shape)
        handle.copy_from_cpu(x)
        predictor.run()
        return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
for _ in range(10):
    run()
times = []
for _ in range(100):
    start = time.perf_counter()
    run()
    times.append((time.perf_counter() - start) * 1000)
print(f"{engine} batch {batch}: median {statistics.median(times):.2f} ms")
