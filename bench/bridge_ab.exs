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

Code.require_file("support/common.exs", __DIR__)

defmodule Bench.BridgeAB do
  import Bench.Common

  @adapter "snakepit_bridge.examples.demo.DemoAdapter"

  def run do
    old = System.get_env("OLD", "HEAD")
    depth = env_int("DEPTH", 4)
    rounds = env_int("ROUNDS", 6)
    ms = env_int("MS", 700)

    callers =
      System.get_env("CALLERS", "8,64") |> String.split(",") |> Enum.map(&String.to_integer/1)

    start(:bridge_old, depth, [old_bridge(old)])
    start(:bridge_new, depth, [])
    IO.puts("# bridge A/B: old = #{old}, new = the working tree; pipeline_depth #{depth}\n")
    IO.puts(row(["callers", "old calls/s", "new calls/s", "new/old per round (sorted)"]))
    IO.puts(rule(4))

    for n <- callers do
      candidates = for pool <- [:bridge_old, :bridge_new], do: {pool, pool}

      # interleave/3 alternates which pool goes first, so warm-up and drift
      # hit both; samples come newest first, paired by round.
      samples =
        interleave(rounds, candidates, fn pool ->
          echo = fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: pool) end
          calls_per_s(echo, %{value: "ping"}, n, ms)
        end)

      {olds, news} = {samples[:bridge_old], samples[:bridge_new]}
      ratios = Enum.zip_with(news, olds, &Float.round(&1 / &2, 2)) |> Enum.sort()
      mean = fn xs -> round(Enum.sum(xs) / length(xs)) end
      IO.puts(row(["#{n}", "#{mean.(olds)}", "#{mean.(news)}", inspect(ratios)]))
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
end

Bench.BridgeAB.run()
