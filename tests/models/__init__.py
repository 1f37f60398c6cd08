"""The model zoo: models written the way people write PyTorch (``zoo.py``: plain torch.nn and functional calls, no
qfx imports) and the harness that quantizes, trains, exports and checks them (``harness.py``)."""
