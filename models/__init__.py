"""Scaled-YOLOv4 model definitions (YOLOv4-P5/P6/P7 and YOLOv4-CSP)."""
