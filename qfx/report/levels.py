"""Display names of the demo's check levels, shared by the text summary and report.html."""

LEVEL_TITLES = {"emulation": "emulation", "onnxruntime": "onnxruntime", "csim": "C-sim", "rtl": "RTL"}
