# Shared memory against the pipe for large tensors, both directions.
#
#   mix run bench/shm.exs            (SHM_MB=100 ROUNDS=7 by default)
#   SHM_ONLY=1 mix run bench/shm.exs (the shm pool alone, back to back)
#
# Two pools of the test adapter, one worker each: `shm` (default options:
# 4 MiB :shm_threshold) and `pipe` (:shm_threshold :infinity, frames up to
# 2 GiB - 1, so the pipe carries it: blobs to Python, one frame back).
# Python -> Elixir: `cached_tensor` returns a float32 array made once per
# worker (the transfer alone is timed). Elixir -> Python:
# `tensor_nbytes` gets a float32 tensor and returns its size. The result is
# held until the call returns, then dropped. Rounds alternate which pool
# goes first; medians of per-call GB/s (10^9 bytes/s).
Code.require_file("support/common.exs", __DIR__)

defmodule Bench.Shm do
  import Bench.Common

  @adapter "snakepit_test_adapters.TestAdapter"

  def run do
    mb = env_int("SHM_MB", 100)
    rounds = env_int("ROUNDS", 7)
    n = div(mb * 1_000_000, 4)
    python_path = [Path.expand("../test/support/python", __DIR__)]

    for {name, extra} <- [
          shm: [],
          pipe: [shm_threshold: :infinity, max_frame_bytes: 0x7FFF_FFFF]
        ] do
      {:ok, _} =
        Snakepit.Pool.start_link(
          [name: name, size: 1, adapter: @adapter, python_path: python_path] ++ extra
        )

      :ok = Snakepit.await_ready(name, 30_000)
      # Warm: the worker makes and caches its array.
      {:ok, _} = Snakepit.execute("cached_tensor", %{n: n}, pool: name, timeout: 120_000)
    end

    candidates = if System.get_env("SHM_ONLY"), do: [shm: :shm], else: [shm: :shm, pipe: :pipe]
    tensor = Snakepit.Tensor.new(:binary.copy(<<1.0::float-little-32>>, n), {:f, 32}, {n})
    bytes = 4 * n

    py_ex = fn pool ->
      {:ok, %Snakepit.Tensor{}} =
        Snakepit.execute("cached_tensor", %{n: n}, pool: pool, timeout: 120_000)
    end

    ex_py = fn pool ->
      {:ok, ^bytes} = Snakepit.execute("tensor_nbytes", %{t: tensor}, pool: pool, timeout: 120_000)
    end

    IO.puts("# #{mb} MB float32, #{rounds} rounds; load before: #{loadavg()}")
    IO.puts(row(["direction", "shm GB/s", "pipe GB/s", "shm/pipe"]))
    IO.puts(rule(4))

    for {label, call} <- [{"Python -> Elixir", py_ex}, {"Elixir -> Python", ex_py}] do
      samples =
        interleave(rounds, candidates, fn pool ->
          :erlang.garbage_collect()
          t0 = System.monotonic_time()
          call.(pool)
          dt = System.monotonic_time() - t0
          bytes / (to_us(dt) * 1000)
        end)

      shm = median(samples.shm)
      pipe = median(samples[:pipe] || [shm])
      IO.puts(row([label, Float.round(shm, 2), Float.round(pipe, 2), ratio(shm, pipe)]))
    end

    IO.puts("# load after: #{loadavg()}")
  end
end

Bench.Shm.run()
