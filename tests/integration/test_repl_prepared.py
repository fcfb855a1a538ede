"""Kernels spawned ahead of time (PreparedKernel) and the rig's KernelPool."""

from rlm_rig.controller.kernels import KernelPool
from rlm_rig.repl.sandbox import PreparedKernel, Sandbox
from rlm_rig.repl.types import SandboxLimits


def handler(reqs):
    from rlm_rig.repl.types import SubCallReply

    return [SubCallReply(text=r.chunk.upper()) for r in reqs]


def test_prepared_kernel_is_adopted():
    lim = SandboxLimits(cell_timeout_s=5)
    pk = PreparedKernel(lim)
    pid = pk._kernel.proc.pid
    with Sandbox("abc", handler=handler, limits=lim, prepared=pk, extra_globals={"N": 3}) as sb:
        assert sb._kernel.proc.pid == pid and sb.scratch == pk.scratch
        r = sb.run_cell("print(len(prompt), N, sub_call(prompt, 'x'))")
        assert r.stdout.strip() == "3 3 ABC"
    assert not pk.scratch.exists()


def test_prepared_kernel_with_other_limits_is_discarded():
    pk = PreparedKernel(SandboxLimits(cell_timeout_s=5, memory_mb=1024))
    with Sandbox("abc", handler=handler, limits=SandboxLimits(cell_timeout_s=5), prepared=pk) as sb:
        assert sb.scratch != pk.scratch and sb.run_cell("print(prompt)").stdout == "abc\n"
    assert not pk.scratch.exists()


def test_dead_prepared_kernel_falls_back_to_a_fresh_start():
    lim = SandboxLimits(cell_timeout_s=5)
    pk = PreparedKernel(lim)
    pk._kernel.kill()
    with Sandbox("abc", handler=handler, limits=lim, prepared=pk) as sb:
        assert sb.run_cell("print(prompt)").stdout == "abc\n"


def test_pool_hands_out_prespawned_kernels_and_cleans_up():
    lim = SandboxLimits(cell_timeout_s=5)
    pool = KernelPool()
    boxes = [pool.sandbox(f"doc{i}", handler=handler, limits=lim) for i in range(3)]
    for i, sb in enumerate(boxes):
        assert sb.run_cell("print(prompt)").stdout == f"doc{i}\n"
        pool.retire(sb)
    pool.close()
    assert pool._spares == [] and all(sb._closed for sb in boxes)
    for sb in boxes:
        assert not sb.scratch.exists()


def test_pool_spawns_a_spare_only_when_more_examples_follow():
    """A single `ask` opens one sandbox: no spare kernel for a next example that never comes. An eval
    (prefetch) keeps one ready from its first sandbox; without being told, from the second on."""
    lim = SandboxLimits(cell_timeout_s=5)

    def spares_after(pool: KernelPool, n: int) -> int:
        boxes = [pool.sandbox("doc", handler=handler, limits=lim) for _ in range(n)]
        for t in list(pool._threads):
            t.join(timeout=60)
        count = len(pool._spares)
        for sb in boxes:
            sb.close()
        pool.close()
        return count

    assert spares_after(KernelPool(), 1) == 0
    assert spares_after(KernelPool(prefetch=True), 1) == 1
    assert spares_after(KernelPool(), 2) == 1
