# Two versions of the Python bridge, side by side: the one in priv/python
# ("new") against a copy from a git revision ("old"), on two pools of the
# demo adapter, interleaved in rounds, so a change to the worker runtime is
# judged by a ratio within one run (these machines are too noisy for
# figures from separate runs).
#
#   OLD=HEAD~3 mix run bench/bridge_ab.exs        (OLD=HEAD by default)
#   DEPTH=4 ROUNDS=6 CALLERS=8,64 MS=700 mix run bench/bridge_ab.exs
#
# The old bridge is taken with `git archive` and put first on the old pool's
# :python_path, so its workers import it instead of priv/python's. Run it
# once with OLD=HEAD and no change (A/A) to see the noise: on a shared
# 2-vCPU machine the second pool measured 0.81-0.87x the first with the
# same code until the order alternated.

defmodule Bench.BridgeAB do
  @adapter "snakepit_bridge.examples.demo.DemoAdapter"

  def run do
    old = System.get_env("OLD", "HEAD")
    depth = env_int("DEPTH", 4)
    rounds = env_int("ROUNDS", 6)
    ms = env_int("MS", 700)

    callers =
      System.get_env("CALLERS", "8,64") |> String.split(",") |> Enum.map(&String.to_integer/1)

    dir = old_bridge(old)

    start(:bridge_old, depth, [dir])
    start(:bridge_new, depth, [])
    IO.puts("# bridge A/B: old = #{old}, new = the working tree; pipeline_depth #{depth}\n")
    IO.puts("| callers | old calls/s | new calls/s | new/old per round (sorted) |")
    IO.puts("| --- | --- | --- | --- |")

    for n <- callers do
      # Which pool goes first alternates, so warm-up and drift hit both.
      pairs =
        for r <- 1..rounds do
          if rem(r, 2) == 1 do
            old = rate(:bridge_old, n, ms)
            {old, rate(:bridge_new, n, ms)}
          else
            new = rate(:bridge_new, n, ms)
            {rate(:bridge_old, n, ms), new}
          end
        end

      ratios = pairs |> Enum.map(fn {o, w} -> Float.round(w / o, 2) end) |> Enum.sort()
      mean = fn f -> round(Enum.sum(Enum.map(pairs, f)) / rounds) end
      IO.puts("| #{n} | #{mean.(&elem(&1, 0))} | #{mean.(&elem(&1, 1))} | #{inspect(ratios)} |")
    end
  end

  defp old_bridge(rev) do
    dir = Path.join(System.tmp_dir!(), "snakepit_bridge_ab_#{System.os_time()}")
    File.mkdir_p!(dir)

    {_, 0} =
      System.shell(
        "git archive #{rev} priv/python/snakepit_bridge | tar -x -C #{dir} && " <>
          "mv #{dir}/priv/python/snakepit_bridge #{dir}/ && rm -rf #{dir}/priv"
      )

    dir
  end

  defp start(name, depth, python_path) do
    {:ok, _} =
      Snakepit.Pool.start_link(
        name: name,
        size: 2,
        adapter: @adapter,
        pipeline_depth: depth,
        python_path: python_path
      )

    :ok = Snakepit.await_ready(name, 30_000)
  end

  defp rate(pool, callers, ms) do
    deadline = System.monotonic_time(:millisecond) + ms

    1..callers
    |> Enum.map(fn _ -> Task.async(fn -> calls(pool, deadline, 0) end) end)
    |> Task.await_many(60_000)
    |> Enum.sum()
    |> Kernel.*(1000)
    |> div(ms)
  end

  defp calls(pool, deadline, n) do
    if System.monotonic_time(:millisecond) < deadline do
      {:ok, _} = Snakepit.execute("echo", %{value: "ping"}, pool: pool)
      calls(pool, deadline, n + 1)
    else
      n
    end
  end

  defp env_int(name, default),
    do: name |> System.get_env(Integer.to_string(default)) |> String.to_integer()
end

Bench.BridgeAB.run()
