"""Helpers shared by train.py, test.py and detect.py."""
