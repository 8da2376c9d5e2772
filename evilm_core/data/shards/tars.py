"""WebDataset tars from the internet (video2dataset's layout: `{key}.mp4`, `{key}.txt`,
`{key}.json`), read with bounded memory (docs/reliability.md, "Bounded reading").

Only the tar headers are read to list a tar: each member is a `TarMember` (offset and size in
the tar file); its data is read when it is used, the video by the decoder (data/video/read.py:
in memory up to 64 MiB, else from a temporary copy), a caption or JSON member only when it is at
most META_BYTES. Extended headers (pax, GNU long names) over META_BYTES end the listing as
damage instead of being read. Members that are not regular files (links, devices, fifos,
directories) are passed over: nothing is ever extracted, so names cannot escape anywhere.

Samples: consecutive members with the same key. A key that comes back (right after itself, or
later in the tar) is a duplicate: the first sample is kept, the later ones are reported
(`duplicate_of`). A tar cut inside a member ends with a `TarDamage` after the samples before
it (the sample being read is still given when its video member is whole).
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from evilm_core.data.video.read import TarMember

META_BYTES = 1 << 20  # the most a caption, a JSON member or an extended tar header may hold
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


@dataclass
class TarSample:
    pos: int  # position among the tar's samples (duplicates included)
    key: str  # the base name its members share ("000000042", "dir/000000042")
    members: dict[str, TarMember] = field(default_factory=dict)  # extension (lower case) -> member
    duplicate_of: int | None = None  # the position of the earlier sample with this key


@dataclass
class TarDamage:
    pos: int  # the samples before it are whole
    detail: str  # what is wrong, naming the member or byte


class _Damaged(Exception):
    pass


def tar_samples(path: str, name: str, spool_dir: str | None = None) -> Iterator[TarSample | TarDamage]:
    """The samples of the tar at `path` (`name`: how member names are shown, "00000.tar"), then a
    TarDamage if it is damaged. `spool_dir`: where a big video member is copied to be decoded."""
    seen: dict[str, int] = {}
    current: TarSample | None = None
    pos = 0
    try:
        for member, offset, size in _regular_members(path):
            key, ext = base_plus_ext(member)
            if key is None:  # a member without an extension belongs to no sample
                continue
            ext = ext.lower()
            if current is not None and (current.key != key or ext in current.members):
                yield current
                pos, current = pos + 1, None
            if current is None:
                current = TarSample(pos, key, duplicate_of=seen.get(key))
                seen.setdefault(key, pos)
            current.members[ext] = TarMember(path, f"{name}/{member}", offset, size, spool_dir)
    except _Damaged as err:
        if current is not None and has_video(current):
            yield current
            pos += 1
        yield TarDamage(pos, str(err))
        return
    if current is not None:
        yield current


def base_plus_ext(name: str) -> tuple[str | None, str | None]:
    """WebDataset's rule (webdataset.tariterators.base_plus_ext, without importing webdataset and
    the torch it imports): the key is the name up to the first dot of its last path component."""
    match = _KEY.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def has_video(sample: TarSample) -> bool:
    from evilm_core.data.records.formats import VIDEO_EXTS

    return any(f".{ext}" in VIDEO_EXTS for ext in sample.members)


def _regular_members(path: str) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file member, from the headers alone (the data
    is skipped by seeking); raises _Damaged where the tar stops making sense."""
    total = os.path.getsize(path)
    with open(path, "rb") as fh:
        _check_header(fh, 0)
        try:
            tar = tarfile.open(fileobj=fh, mode="r:")
        except (tarfile.TarError, OSError, EOFError, UnicodeError) as err:
            raise _Damaged(f"not a readable tar ({type(err).__name__}: {str(err)[:160]})") from None
        while True:
            try:
                info = tar.next()  # the first call gives the member tarfile.open read
            except (tarfile.TarError, OSError, EOFError, UnicodeError) as err:
                raise _Damaged(f"damaged at byte {tar.offset} ({type(err).__name__}: {str(err)[:160]})") from None
            if info is None:
                _check_end(fh, tar.offset)
                return
            if info.isreg():
                if info.offset_data + info.size > total:
                    raise _Damaged(f"member {info.name} is cut: {info.size} bytes from byte {info.offset_data}, the "
                                   f"file ends at {total}")
                yield info.name, info.offset_data, info.size
            tar.members.clear()  # nothing is kept per member: a tar of millions costs no memory
            _check_header(fh, tar.offset)


def _check_end(fh, offset: int) -> None:
    """tarfile ends quietly at a header it cannot parse: only zero blocks (or nothing) may follow
    the last member of a whole tar."""
    block = os.pread(fh.fileno(), tarfile.BLOCKSIZE, offset)
    if any(block):
        raise _Damaged(f"damaged at byte {offset} (not a tar header)")


def _check_header(fh, offset: int) -> None:
    """Refuse an extended header whose data tarfile would read whole into memory."""
    block = os.pread(fh.fileno(), tarfile.BLOCKSIZE, offset)
    if len(block) < tarfile.BLOCKSIZE:
        return
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return  # an end block or damage: tarfile says which
    if info.type in _EXTENDED and info.size > META_BYTES:
        raise _Damaged(f"an extended header of {info.size} bytes at byte {offset} (more than {META_BYTES})")


def read_text_member(member: TarMember | None) -> bytes | None:
    """A small member's bytes (a caption, a JSON document); None when absent. Raises
    VideoDecodeError for one over META_BYTES."""
    return None if member is None else member.read(META_BYTES)
