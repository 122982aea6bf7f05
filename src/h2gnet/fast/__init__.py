"""FAST / FastPathology: ONNX graph edits, the ``.fpl`` pipeline text, and the pyFAST runner."""
