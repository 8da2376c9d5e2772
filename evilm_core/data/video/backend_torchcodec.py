"""The torchcodec backend (docs/data.md, "Decoders"): exact seek mode, one FFmpeg thread,
resized in the decoder (its Resize transform). Needs FFmpeg's shared libraries on the system."""

from __future__ import annotations

import numpy as np


class TorchCodecReader:
    """torchcodec: exact seek mode, one FFmpeg thread, resized in the decoder (its Resize transform)."""

    def __init__(self, source, size: int | None):
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        if not isinstance(source, bytes):
            with open(source, "rb") as fh:  # a file object: any file name, including non-UTF-8 ones
                source = fh.read()
        self.decoder = VideoDecoder(source, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact",
                                    transforms=[Resize((size, size))] if size else None)
        meta = self.decoder.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.fps = float(meta.average_fps or 0.0)

    def get(self, indices: list[int]) -> np.ndarray:
        return self.decoder.get_frames_at(list(indices)).data.numpy()

    def close(self) -> None:
        del self.decoder
