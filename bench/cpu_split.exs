# Where a tiny call's CPU goes: CPU µs and thread switches per call, by
# thread group (BEAM schedulers, aux thread, our reader/writer threads, the
# Python workers), while CALLERS processes call `echo` for SECS seconds.
#
#   mix run bench/cpu_split.exs
#   CALLERS=1 DEPTH=1 SECS=3 mix run bench/cpu_split.exs
#   POOL=port mix run bench/cpu_split.exs   # the Port pool of bench/roundtrip.exs
#
# The figures come from /proc (schedstat for CPU, status for switches), so
# they cost nothing to collect and need no profiler. CPU per call was the
# steadiest figure found on these 2-vCPU machines (±5% between runs where
# calls/s moved ±30%): use it to bisect or to compare two checkouts, running
# this script in each alternately (see docs/benchmarks.md). Groups: BEAM
# threads by name with digits dropped (`N_scheduler`, `N_aux`, ...), our
# `snakepit-r` (readers), `snakepit-w` (writers), `snakepit-e` (stderr), and
# `python` (every Python process under the BEAM, main and control threads).

Code.require_file("support/common.exs", __DIR__)
Code.require_file("support/msgpack.exs", __DIR__)
Code.require_file("support/port_pool.exs", __DIR__)

defmodule Bench.CpuSplit do
  import Bench.Common

  @adapter "snakepit_bridge.examples.demo.DemoAdapter"

  def run do
    depth = env_int("DEPTH", 4)
    callers = env_int("CALLERS", 64)
    secs = env_int("SECS", 3)

    call =
      case System.get_env("POOL", "snakepit") do
        "snakepit" ->
          {:ok, _} =
            Snakepit.Pool.start_link(
              name: :split,
              size: 2,
              adapter: @adapter,
              pipeline_depth: depth
            )

          :ok = Snakepit.await_ready(:split, 30_000)
          fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: :split) end

        "port" ->
          env = [{"PYTHONPATH", Path.join(:code.priv_dir(:snakepit), "python")}]
          ports = List.to_tuple(for _ <- 1..2, do: elem(Bench.PortPool.start(@adapter, env), 1))
          next = :atomics.new(1, [])

          fn args ->
            port = elem(ports, rem(:atomics.add_get(next, 1, 1), 2))
            {:ok, _} = Bench.PortPool.call(port, "echo", args)
          end
      end

    for _ <- 1..2_000, do: call.(%{"value" => "warm"})

    before = sample()
    cps = calls_per_s(call, %{"value" => "ping"}, callers, secs * 1000)
    after_ = sample()
    calls = cps * secs

    IO.puts(
      machine_line(
        "#{System.get_env("POOL", "snakepit")}, #{callers} callers, pipeline_depth #{depth}, #{secs} s"
      )
    )

    IO.puts("\n#{round(cps)} calls/s\n")
    IO.puts(row(["thread group", "CPU µs per call", "switches per call"]))
    IO.puts(rule(3))

    rows =
      for {group, {ns, sw}} <- after_,
          {ns0, sw0} = Map.get(before, group, {0, 0}),
          ns > ns0 do
        {group, (ns - ns0) / 1000 / calls, (sw - sw0) / calls}
      end

    for {group, us, sw} <- Enum.sort_by(rows, &(-elem(&1, 1))) do
      IO.puts(row([group, "#{Float.round(us, 2)}", "#{Float.round(sw, 3)}"]))
    end

    total = rows |> Enum.map(&elem(&1, 1)) |> Enum.sum()
    IO.puts(row(["total", "#{Float.round(total, 2)}", ""]))
  end

  # %{group => {cpu ns, context switches}} for every thread of the BEAM and
  # of the Python processes under it.
  defp sample do
    beam = System.pid()
    pythons = for pid <- descendants(beam), comm(pid, nil) =~ ~r/^python/, do: pid

    threads =
      for pid <- [beam | pythons],
          {:ok, tids} <- [File.ls("/proc/#{pid}/task")],
          tid <- tids do
        group =
          if pid == beam,
            do: String.replace(comm(pid, tid), ~r/\d+/, "N"),
            else: "python"

        {group, {cpu(pid, tid), switches(pid, tid)}}
      end

    Enum.reduce(threads, %{}, fn {group, {ns, sw}}, acc ->
      Map.update(acc, group, {ns, sw}, fn {a, b} -> {a + ns, b + sw} end)
    end)
  end

  defp comm(pid, nil), do: read("/proc/#{pid}/comm")
  defp comm(pid, tid), do: read("/proc/#{pid}/task/#{tid}/comm")

  defp cpu(pid, tid) do
    case read("/proc/#{pid}/task/#{tid}/schedstat") do
      "" -> 0
      stat -> stat |> String.split() |> hd() |> String.to_integer()
    end
  end

  defp switches(pid, tid) do
    for line <- String.split(read("/proc/#{pid}/task/#{tid}/status"), "\n"),
        String.contains?(line, "ctxt_switches"),
        reduce: 0 do
      acc -> acc + (line |> String.split() |> List.last() |> String.to_integer())
    end
  end

  defp read(path) do
    case File.read(path) do
      {:ok, text} -> String.trim(text)
      {:error, _} -> ""
    end
  end
end

Bench.CpuSplit.run()
