"""The `onnxplain` command line (Click); the library itself never imports click."""
