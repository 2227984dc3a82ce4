"""dftnet.plan: the FFT length and the dense-versus-FFT cost model."""

import torch

from dftnet.plan import (
    BLOCK_CHUNK_MIN_ROWS,
    BLOCK_SPECTRUM_MAX_BYTES,
    BlockShape,
    block_chunk_rows,
    fast_length,
    fft_cost,
    make_plan,
    use_dense,
)


def test_route_choice_follows_size_batch_and_mode():
    cpu = torch.device("cpu")
    for threads in (1, 2):
        for training in (False, True):
            assert use_dense(16, 16, 1024, cpu, training, threads=threads)  # tiny: always the matmul
            assert not use_dense(4096, 4096, 1, cpu, training, threads=threads)  # wide: always the FFT
        # more rows per call favour the FFT (its fixed cost is amortised)
        assert use_dense(256, 256, 8, cpu, False, threads=threads)
        assert not use_dense(256, 256, 1024, cpu, False, threads=threads)
        # with gradients the dense route also builds W from the spectrum and saves it (measured: FFT faster
        # from n = 128 up in training, from n = 256 and batch 32 up in inference)
        assert not use_dense(256, 256, 8, cpu, training=True, threads=threads)


def test_route_choice_follows_the_thread_count():
    """Both routes' per-row costs shrink with threads, their fixed costs do not: on 2 threads small
    inference calls the 1-thread fit sends to the FFT route take the dense route (measured faster there)."""
    cpu = torch.device("cpu")
    for p, q, batch in [(785, 300, 8), (300, 785, 8), (256, 256, 32)]:
        assert not use_dense(p, q, batch, cpu, False, threads=1)
        assert use_dense(p, q, batch, cpu, False, threads=2)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert use_dense(785, 300, 8, cpu, False)  # the default: torch's thread count
    finally:
        torch.set_num_threads(n)
    cuda = torch.device("cuda")  # the rule is for CPU threads only
    assert use_dense(785, 300, 8, cuda, False, threads=1) == use_dense(785, 300, 8, cuda, False, threads=2)


def test_plan_picks_the_cheaper_fft_length():
    for p, q in [(784, 300), (300, 785), (64, 64), (1000, 10)]:
        plan = make_plan(p, q)
        n = max(p, q)
        assert plan.n == n and plan.fft_size in (n, fast_length(p + q - 1))
        assert fft_cost(plan.fft_size) == min(fft_cost(n), fft_cost(fast_length(p + q - 1)))
        assert plan.circular == (plan.fft_size == n)


def test_block_shape_counts_blocks():
    shape = BlockShape(100, 33, 16)
    assert (shape.in_blocks, shape.out_blocks) == (7, 3)
    assert shape.transpose() == BlockShape(33, 100, 16)


def test_block_chunks_are_equal_and_their_spectra_stay_under_the_cap():
    """A block layer's calls on many rows run in chunks of equal size, of at least BLOCK_CHUNK_MIN_ROWS rows
    where the spectra allow it; a chunk's spectra stay under BLOCK_SPECTRUM_MAX_BYTES."""
    assert block_chunk_rows(512, 2048, 16, 4, 1000) == 1000
    assert block_chunk_rows(512, 2048, 16, 4, 8192) == BLOCK_CHUNK_MIN_ROWS
    assert block_chunk_rows(512, 2048, 16, 4, 1500) == 750  # 750 + 750, not 1024 + 476
    for p, q, k, rows in [(2048, 8192, 64, 1024), (8192, 2048, 16, 8192), (16384, 4096, 4, 300), (65536, 512, 64, 64)]:
        chunk = block_chunk_rows(p, q, k, 4, rows)
        spectrum = chunk * -(-max(p, q) // k) * (k // 2 + 1) * 8  # complex64 bytes of the larger side
        assert chunk >= 1 and spectrum <= BLOCK_SPECTRUM_MAX_BYTES
        sizes = [min(chunk, rows - s) for s in range(0, rows, chunk)]
        assert max(sizes) - min(sizes) < len(sizes)  # equal, up to the rounding of rows / chunks
    assert block_chunk_rows(2048, 8192, 64, 4, 1024) == 512
