"""TFLite flatbuffers written straight from the IR, without TensorFlow."""
