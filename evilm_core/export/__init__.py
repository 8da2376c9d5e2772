"""`evilm export`: the two retrieval towers of an E-ViLM checkpoint as standalone programs
(ONNX for onnxruntime, or torch.export `.pt2`), so a serving process embeds videos or queries
without the training code, timm or the checkpoint. towers.py writes an export directory,
runtime.py runs one; both agree on export.json, which records the checkpoint's model_hash so
retrieval indexes built from an export and from its checkpoint stay interchangeable."""
