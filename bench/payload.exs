# Payload sweep: how fast big binaries cross, against the Port baseline and
# the physical floor of a pipe.
#
#   mix run bench/payload.exs              (ROUNDS=5 SECONDS=1 by default)
#   SIZES=1048576 ROUNDS=9 mix run bench/payload.exs   (one size only)
#   THROUGHPUT=0 mix run bench/payload.exs             (skip the tiny-call part)
#   PROFILE=snakepit|port|c_port PROFILE_SECONDS=20 mix run bench/payload.exs
#                      (no tables: a loop of 1 MiB echoes, for perf/strace)
#
# Echo round trips of one random (non-UTF-8, so MessagePack `bin`) binary, 1
# caller, 1 worker each, candidates interleaved per size (A B C ... then
# reversed) over several rounds:
#
#   snakepit  `Snakepit.execute("echo", %{value: bin})`, `max_frame_bytes` 256 MiB
#             (from the default `shm_threshold`, 4 MiB, through shared memory)
#   snakepit_pipe  the same with `shm_threshold: :infinity`: through the pipes
#   port      bench/support/port_pool.exs: a GenServer owning a `{:packet, 4}`
#             Port to the same bridge, run as `python3 -m snakepit_bridge`
#   py_raw    a `{:packet, 4}` Port to bench/support/raw_pipe_echo.py: Python
#             pipe I/O with no codec (os.readv / os.writev)
#   c_port    a `{:packet, 4}` Port to bench/support/raw_pipe_echo.c: the pipe
#             floor as the BEAM's Port sees it
#   c_pipe    the same C echo driven by a C driver over a pipe pair, entirely
#             outside the BEAM: the physical floor (its own processes, timed
#             by itself, in the same interleaved order)
#
# MiB/s is payload bytes each way / p50 round-trip time. The C programs are
# compiled with `cc` into _build/bench/; without `cc` their rows are skipped.
# Then throughput of tiny calls at 1/8/64 callers, 2 workers each: Snakepit
# with `pipeline_depth` 1, 2 and 4, and the pipelining Port pool, with the
# CPU time each spends per call.

Code.require_file("support/common.exs", __DIR__)
Code.require_file("support/msgpack.exs", __DIR__)
Code.require_file("support/port_pool.exs", __DIR__)

defmodule Bench.Payload do
  import Bench.Common

  @adapter "snakepit_bridge.examples.demo.DemoAdapter"
  @max_frame 256 * 1024 * 1024
  @sizes [1024, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024, 100 * 1024 * 1024]

  def run do
    case System.get_env("PROFILE") do
      nil -> sweep()
      who -> profile(who, env_int("PROFILE_SECONDS", 20), env_int("PROFILE_SIZE", 1_048_576))
    end
  end

  defp sweep do
    rounds = env_int("ROUNDS", 5)
    sizes = sizes()

    IO.puts("# Snakepit payload benchmark")

    IO.puts(
      "#{System.schedulers_online()} schedulers, OTP #{System.otp_release()}, " <>
        "Elixir #{System.version()}, #{rounds} rounds, load average before: #{loadavg()}"
    )

    candidates = echo_candidates()
    names = Enum.map(candidates, &elem(&1, 0))
    bins = Map.new(sizes, fn s -> {s, :crypto.strong_rand_bytes(s)} end)

    # Warm every path up.
    for {_, call} <- candidates, do: call.(:crypto.strong_rand_bytes(1024), 200)

    IO.puts("\n## Echo round trip, 1 caller, 1 worker (p50 µs, MiB/s each way)\n")
    IO.puts(row(["size" | names] ++ ["snakepit / port", "snakepit / c_port", "snakepit / c_pipe"]))
    IO.puts(rule(length(names) + 4))

    for size <- sizes do
      bin = Map.fetch!(bins, size)
      n = iterations(size)
      samples = interleave(rounds, candidates, fn call -> call.(bin, n) end)
      # p50 over all calls of all rounds, and the per-round p50s for ratios.
      p50 = Map.new(samples, fn {k, rs} -> {k, rs |> List.flatten() |> Enum.sort() |> pct(50)} end)

      cells =
        Enum.map(names, fn name ->
          "#{us(p50[name])} (#{mibs(size, p50[name])})"
        end)

      IO.puts(
        row(
          [label(size) | cells] ++
            [
              ratio_range(samples, "snakepit", "port"),
              ratio_range(samples, "snakepit", "c_port"),
              ratio_range(samples, "snakepit", "c_pipe")
            ]
        )
      )
    end

    IO.puts(
      "\nRatios: p50 over all calls, and in brackets the range of per-round p50 ratios " <>
        "(below 1.0: Snakepit is faster)."
    )

    if System.get_env("THROUGHPUT", "1") != "0", do: throughput(rounds)
    IO.puts("\nload average after the run: #{loadavg()}")
  end

  defp sizes do
    case System.get_env("SIZES") do
      nil -> @sizes
      s -> s |> String.split(",") |> Enum.map(&String.to_integer/1)
    end
  end

  # Calls per candidate per round: enough for a p50, about 0.2 s of Port time.
  defp iterations(size) when size <= 1024, do: 400
  defp iterations(size) when size <= 65_536, do: 150
  defp iterations(size) when size <= 1_048_576, do: 30
  defp iterations(size) when size <= 16_777_216, do: 4
  defp iterations(_), do: 1

  # Each candidate is `fn bin, n -> [native time of each of n round trips] end`.
  defp echo_candidates do
    {:ok, _} =
      Snakepit.Pool.start_link(
        name: :payload,
        size: 1,
        adapter: @adapter,
        max_frame_bytes: @max_frame
      )

    :ok = Snakepit.await_ready(:payload, 30_000)

    # The same with shared memory off: everything through the pipes (blobs
    # from 64 KiB), to see what the default :shm_threshold (4 MiB) buys.
    {:ok, _} =
      Snakepit.Pool.start_link(
        name: :payload_pipe,
        size: 1,
        adapter: @adapter,
        max_frame_bytes: @max_frame,
        shm_threshold: :infinity
      )

    :ok = Snakepit.await_ready(:payload_pipe, 30_000)

    {:ok, port} = Bench.PortPool.start(@adapter, python_env())

    # Answers are checked by size only: comparing bytes would add a memcmp
    # to the BEAM candidates that c_pipe does not pay.
    snakepit = fn pool ->
      fn bin ->
        size = byte_size(bin)
        {:ok, out} = Snakepit.execute("echo", %{value: bin}, pool: pool, timeout: 300_000)
        ^size = byte_size(out)
      end
    end

    port_call = fn bin ->
      size = byte_size(bin)
      {:ok, out} = Bench.PortPool.call(port, "echo", %{"value" => bin}, 300_000)
      ^size = byte_size(out)
    end

    py_raw = packet_port(System.find_executable("python3"), [script("raw_pipe_echo.py")])

    c =
      case c_echo("(no cc: the c_port and c_pipe rows are skipped)") do
        nil ->
          []

        exe ->
          c_port = packet_port(exe, [])

          [
            {"c_port", timed(fn bin -> port_echo(c_port, bin) end)},
            {"c_pipe", fn bin, n -> c_drive(exe, byte_size(bin), n) end}
          ]
      end

    [
      {"snakepit", timed(snakepit.(:payload))},
      {"snakepit_pipe", timed(snakepit.(:payload_pipe))},
      {"port", timed(port_call)},
      {"py_raw", timed(fn bin -> port_echo(py_raw, bin) end)}
    ] ++ c
  end

  defp timed(call) do
    fn bin, n ->
      for _ <- 1..n do
        t0 = System.monotonic_time()
        call.(bin)
        System.monotonic_time() - t0
      end
    end
  end

  defp python_env do
    [
      {"PYTHONPATH", Path.join(:code.priv_dir(:snakepit), "python")},
      {"SNAKEPIT_MAX_FRAME_BYTES", "#{@max_frame}"}
    ]
  end

  defp script(name), do: Path.join([__DIR__, "support", name])

  defp ratio_range(samples, a, b) do
    case {samples[a], samples[b]} do
      {nil, _} ->
        "-"

      {_, nil} ->
        "-"

      {as, bs} ->
        all = fn rs -> rs |> List.flatten() |> Enum.sort() |> pct(50) end
        per_round = Enum.zip_with(as, bs, fn x, y -> med(x) / med(y) end)
        lo = per_round |> Enum.min() |> Float.round(2)
        hi = per_round |> Enum.max() |> Float.round(2)
        "#{ratio(all.(as), all.(bs))} [#{lo}–#{hi}]"
    end
  end

  defp med(xs), do: xs |> Enum.sort() |> pct(50)

  defp mibs(size, native), do: "#{round(size / 1_048_576 / (to_us(native) / 1_000_000))}"

  defp label(size) when size >= 1_048_576 and rem(size, 1_048_576) == 0,
    do: "#{div(size, 1_048_576)} MiB"

  defp label(size) when size >= 1_048_576, do: "#{Float.round(size / 1_048_576, 2)} MiB"
  defp label(size), do: "#{div(size, 1024)} KiB"

  ## Tiny calls, many callers

  defp throughput(rounds) do
    seconds = env_int("SECONDS", 1)

    pools =
      for {name, depth} <- [tp1: 1, tp2: 2, tp4: 4] do
        {:ok, _} =
          Snakepit.Pool.start_link(name: name, size: 2, adapter: @adapter, pipeline_depth: depth)

        :ok = Snakepit.await_ready(name, 30_000)
        {name, for(w <- Snakepit.list_workers(name), do: w.os_pid)}
      end

    servers = for _ <- 1..2, do: elem(Bench.PortPool.start(@adapter, python_env()), 1)
    port_pids = for s <- servers, do: elem(Port.info(:sys.get_state(s).port, :os_pid), 1)
    ports = List.to_tuple(servers)
    next = :atomics.new(1, [])

    snakepit = fn {pool, pids} ->
      {fn args -> {:ok, _} = Snakepit.execute("echo", args, pool: pool) end, pids}
    end

    [p1, p2, p4] = Enum.map(pools, snakepit)

    port =
      {fn args ->
         port = elem(ports, rem(:atomics.add_get(next, 1, 1), 2))
         {:ok, _} = Bench.PortPool.call(port, "echo", args)
       end, port_pids}

    candidates = [{"snakepit", p1}, {"snakepit_p2", p2}, {"snakepit_p4", p4}, {"port", port}]
    names = Enum.map(candidates, &elem(&1, 0))

    for {_, {call, _}} <- candidates, _ <- 1..500, do: call.(%{"value" => "warm"})

    IO.puts("\n## Throughput, tiny call (4 B), 2 workers (calls/s; median of #{rounds} rounds)\n")

    IO.puts(
      "CPU µs/call: the BEAM's threads and the candidate's Python workers, per call\n" <>
        "(a steadier figure than calls/s on a shared machine).\n"
    )

    IO.puts(
      row(
        ["callers"] ++
          names ++
          Enum.map(List.delete(names, "port"), &"#{&1} / port") ++ ["CPU µs/call, same order"]
      )
    )

    IO.puts(rule(2 * length(names) + 1))

    for callers <- [1, 8, 64] do
      samples =
        interleave(rounds, candidates, fn {call, pids} ->
          cpu_before = cpu_ns([System.pid() | pids])
          rate = calls_per_s(call, %{"value" => "ping"}, callers, seconds * 1000)
          cpu = cpu_ns([System.pid() | pids]) - cpu_before
          {rate, cpu / 1000 / (rate * seconds)}
        end)

      rates = Enum.map(names, fn n -> median(Enum.map(samples[n], &elem(&1, 0))) end)
      cpus = Enum.map(names, fn n -> median(Enum.map(samples[n], &elem(&1, 1))) end)
      port_rate = List.last(rates)

      IO.puts(
        row(
          ["#{callers}"] ++
            Enum.map(rates, &"#{round(&1)}") ++
            Enum.map(Enum.drop(rates, -1), &ratio(&1, port_rate)) ++
            [Enum.map_join(cpus, " / ", &"#{round(&1)}")]
        )
      )
    end
  end

  ## Profiling loop

  defp profile(who, seconds, size) do
    [{_, call}] = Enum.filter(echo_candidates(), fn {name, _} -> name == who end)
    bin = :crypto.strong_rand_bytes(size)
    call.(bin, 20)
    IO.puts("BEAM os pid #{System.pid()}: #{who} echoes #{size} B for #{seconds} s")
    deadline = System.monotonic_time(:millisecond) + seconds * 1000
    n = profile_loop(call, bin, deadline, 0)
    IO.puts("#{n} round trips, #{Float.round(n / seconds, 1)}/s")
  end

  defp profile_loop(call, bin, deadline, n) do
    if System.monotonic_time(:millisecond) < deadline do
      call.(bin, 1)
      profile_loop(call, bin, deadline, n + 1)
    else
      n
    end
  end
end

Bench.Payload.run()
