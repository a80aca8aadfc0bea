"""Storage codecs: bit packing, canonical Huffman, relative sparse indices and the artifact container."""

from deepshrink.codec.container import (
    FORMAT_VERSION,
    MAGIC,
    Container,
    decode_container,
    encode_container,
    inspect_container,
    read_container,
    write_container,
)
from deepshrink.codec.huffman import (
    MAX_CODE_LEN,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    encoded_payload_bits,
    entropy_bits,
    validate_lengths,
)
from deepshrink.codec.packing import pack_bits, packed_nbytes, unpack_bits
from deepshrink.codec.sparse import (
    best_index_bits,
    count_fillers,
    decode_positions,
    encode_positions,
    index_stream_bits,
)

huffman_encode = encode
huffman_decode = decode

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CODE_LEN",
    "Container",
    "best_index_bits",
    "canonical_codes",
    "code_lengths",
    "count_fillers",
    "decode",
    "decode_container",
    "decode_positions",
    "encode",
    "encode_container",
    "encode_positions",
    "encoded_payload_bits",
    "entropy_bits",
    "huffman_decode",
    "huffman_encode",
    "index_stream_bits",
    "inspect_container",
    "pack_bits",
    "packed_nbytes",
    "read_container",
    "unpack_bits",
    "validate_lengths",
    "write_container",
]
