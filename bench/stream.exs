# Streams: Snakepit's credit-based streams vs a hand-written Port stream
# that pushes freely, driving the same Python generator.
#
#   mix run bench/stream.exs     (ROUNDS=5 SMALL_N=20000 BIG_N=1000 SLOW_CAP=2000)
#
# Throughput: one stream of SMALL_N chunks of 100 B, and one of BIG_N chunks
# of 64 KiB, per candidate and round, on one worker:
#
# - `stream wW`: `Snakepit.stream(tool, args, stream_window: W) |> Enum.reduce(...)`
# - `execute_stream wW`: `Snakepit.execute_stream/4` with a callback
#   (W = 32, the default, and 256);
# - `port`: an Elixir Port with `{:packet, 4}` to
#   bench/support/python/port_stream_worker.py, which writes every chunk as
#   soon as it has it (no credits), with the bridge's own codec and frame
#   writer and the same generator; this process receives each chunk from the
#   port and decodes it (bench/support/msgpack.exs), with no GenServer hop.
#
# The candidates run interleaved (A B C ... then reversed) over ROUNDS
# rounds; figures are medians over rounds (with the slowest and fastest
# round), and the ratio is the median of the per-round ratios candidate /
# port (above 1.0: faster than the Port).
# MB/s counts chunk payload bytes, MB = 10^6 bytes.
#
# Slow consumer: 300 chunks of 64 KiB, the consumer sleeping 10 ms per
# chunk. Snakepit's producer is infinite (window 32); the Port's is capped
# at SLOW_CAP chunks, because nothing else would stop it. Printed: the
# consumer's largest mailbox, the BEAM's binary memory, the Python process's
# RSS, before and at the 300th chunk.

Code.require_file("support/common.exs", __DIR__)
Code.require_file("support/msgpack.exs", __DIR__)
Code.require_file("support/port_stream.exs", __DIR__)

defmodule Bench.Stream do
  import Bench.Common

  @pool :bench_stream
  @adapter "snakepit_bench_stream_adapter.StreamBenchAdapter"
  @small 100
  @big 65_536
  @slow_chunks 300
  @slow_sleep_ms 10

  def run do
    rounds = env_int("ROUNDS", 5)
    small_n = env_int("SMALL_N", 20_000)
    big_n = env_int("BIG_N", 1_000)
    slow_cap = env_int("SLOW_CAP", 2_000)

    IO.puts("# Snakepit stream benchmark")
    IO.puts(machine_line("#{rounds} rounds, 1 worker"))

    bench_python = Path.expand("support/python", __DIR__)

    {:ok, _} =
      Snakepit.Pool.start_link(
        name: @pool,
        size: 1,
        adapter: @adapter,
        python_path: [bench_python]
      )

    :ok = Snakepit.await_ready(@pool, 60_000)
    port = Bench.PortStream.open([bench_python, Path.join(:code.priv_dir(:snakepit), "python")])
    IO.puts("Python codec: #{python_codec()}")

    candidates = [
      {"stream w32", &snakepit_stream(&1, &2, &3, 32)},
      {"stream w256", &snakepit_stream(&1, &2, &3, 256)},
      {"execute_stream w32", &snakepit_execute_stream(&1, &2, &3, 32)},
      {"execute_stream w256", &snakepit_execute_stream(&1, &2, &3, 256)},
      {"port", &port_stream(port, &1, &2, &3)}
    ]

    # Warm both paths up.
    for {_, run} <- candidates, do: run.("small", 2_000, @small)

    IO.puts("\n## Throughput, one stream at a time (median of #{rounds} rounds)\n")
    IO.puts(row(["chunks", "candidate", "chunks/s", "MB/s", "vs port", "chunks/s, rounds min–max"]))
    IO.puts(rule(6))

    for {tool, n, size, label} <- [
          {"small", small_n, @small, "#{small_n} x 100 B"},
          {"big", big_n, @big, "#{big_n} x 64 KiB"}
        ] do
      samples =
        interleave(rounds, candidates, fn run ->
          t0 = System.monotonic_time()
          {^n, bytes} = run.(tool, n, size)
          ^bytes = n * size
          System.monotonic_time() - t0
        end)

      port_times = Enum.reverse(samples["port"])

      for {name, _} <- candidates do
        times = Enum.reverse(samples[name])
        secs = to_us(median(times)) / 1_000_000
        # Per-round ratio of rates = port time / candidate time.
        r = median(Enum.zip_with(port_times, times, fn p, c -> p / c end))

        IO.puts(
          row([
            label,
            name,
            "#{rate(n, median(times))}",
            "#{Float.round(n * size / 1_000_000 / secs, 1)}",
            if(name == "port", do: "1.0", else: "#{Float.round(r, 2)}"),
            "#{rate(n, Enum.max(times))}–#{rate(n, Enum.min(times))}"
          ])
        )
      end
    end

    slow_consumer(port, slow_cap)
    IO.puts("\nload average after the run: #{loadavg()}")
  end

  defp rate(n, native), do: round(n / (to_us(native) / 1_000_000))

  defp snakepit_stream(tool, n, size, window) do
    Snakepit.stream(tool, %{n: n, size: size}, pool: @pool, stream_window: window)
    |> Enum.reduce({0, 0}, fn chunk, {count, bytes} -> {count + 1, bytes + byte_size(chunk)} end)
  end

  defp snakepit_execute_stream(tool, n, size, window) do
    Process.put(:bench_acc, {0, 0})

    :ok =
      Snakepit.execute_stream(
        tool,
        %{n: n, size: size},
        fn chunk ->
          {count, bytes} = Process.get(:bench_acc)
          Process.put(:bench_acc, {count + 1, bytes + byte_size(chunk)})
        end,
        pool: @pool,
        stream_window: window
      )

    Process.delete(:bench_acc)
  end

  defp port_stream(port, _tool, n, size) do
    id = System.unique_integer([:positive])

    Bench.PortStream.stream(port, id, n, size, {0, 0}, fn chunk, {count, bytes} ->
      {count + 1, bytes + byte_size(chunk)}
    end)
  end

  ## Slow consumer

  defp slow_consumer(port, cap) do
    IO.puts(
      "\n## Slow consumer: #{@slow_chunks} chunks of 64 KiB, #{@slow_sleep_ms} ms of sleep per chunk\n"
    )

    IO.puts(
      "Snakepit: an infinite generator, window 32 (the default). Port: the same generator " <>
        "capped at #{cap} chunks (#{mb(cap * @big)} MiB).\n"
    )

    IO.puts(
      row([
        "",
        "time s",
        "max mailbox",
        "mailbox at end",
        "BEAM binary MiB before → at end",
        "Python RSS MiB before → max → at end"
      ])
    )

    IO.puts(rule(6))

    s = slow_snakepit()
    print_slow("snakepit", s)
    p = slow_port(port, cap)
    print_slow("port", p)

    IO.puts(
      "\nPort: #{p.sent} of its #{cap} chunks had arrived by the end " <>
        "(#{p.mailbox_end} of them waiting in the mailbox); " <>
        "draining them took #{p.drain_ms} ms."
    )
  end

  defp slow_snakepit do
    worker_rss = fn ->
      [%{rss_bytes: rss}] = Snakepit.list_workers(@pool)
      rss
    end

    gc()
    before = %{bin: :erlang.memory(:binary), rss: worker_rss.()}
    t0 = System.monotonic_time()

    acc =
      Snakepit.stream("big", %{n: 0, size: @big}, pool: @pool)
      |> Stream.take(@slow_chunks)
      |> Enum.reduce(%{n: 0, max_q: 0, max_rss: 0}, fn _chunk, acc ->
        Process.sleep(@slow_sleep_ms)
        q = mailbox_len()
        rss = worker_rss.()
        acc = %{n: acc.n + 1, max_q: max(acc.max_q, q), max_rss: max(acc.max_rss, rss)}

        # Sampled before Stream.take/2 halts, which cancels the stream.
        if acc.n == @slow_chunks,
          do: Map.merge(acc, %{q_end: q, rss_end: rss, bin_end: :erlang.memory(:binary)}),
          else: acc
      end)

    %{
      secs: to_us(System.monotonic_time() - t0) / 1_000_000,
      max_q: acc.max_q,
      q_end: acc.q_end,
      bin: {before.bin, acc.bin_end},
      rss: {before.rss, acc.max_rss, acc.rss_end}
    }
  end

  defp slow_port(port, cap) do
    os_pid = Bench.PortStream.os_pid(port)
    gc()
    before = %{bin: :erlang.memory(:binary), rss: rss_bytes(os_pid)}
    id = System.unique_integer([:positive])
    t0 = System.monotonic_time()
    :ok = Bench.PortStream.request(port, id, cap, @big)

    acc =
      Enum.reduce(1..@slow_chunks, %{max_q: 0, max_rss: 0}, fn _, acc ->
        receive do
          {^port, {:data, data}} -> ["chunk", ^id, _chunk] = Bench.Msgpack.decode(data)
        end

        Process.sleep(@slow_sleep_ms)
        q = mailbox_len()
        %{max_q: max(acc.max_q, q), max_rss: max(acc.max_rss, rss_bytes(os_pid))}
      end)

    secs = to_us(System.monotonic_time() - t0) / 1_000_000
    q_end = mailbox_len()
    bin_end = :erlang.memory(:binary)
    rss_end = rss_bytes(os_pid)

    # The rest of the capped stream, up to its end frame.
    t1 = System.monotonic_time()
    rest = Bench.PortStream.reduce(port, id, 0, fn _, n -> n + 1 end)
    ^cap = @slow_chunks + rest

    # All of it had arrived if the mailbox held the rest and the end frame.
    arrived = if q_end == rest + 1, do: cap, else: @slow_chunks + q_end

    %{
      secs: secs,
      max_q: acc.max_q,
      q_end: q_end,
      bin: {before.bin, bin_end},
      rss: {before.rss, acc.max_rss, rss_end},
      sent: arrived,
      mailbox_end: arrived - @slow_chunks,
      drain_ms: round(to_us(System.monotonic_time() - t1) / 1000)
    }
  end

  defp print_slow(name, r) do
    {bin0, bin1} = r.bin
    {rss0, rss_max, rss1} = r.rss

    IO.puts(
      row([
        name,
        "#{Float.round(r.secs, 2)}",
        "#{r.max_q}",
        "#{r.q_end}",
        "#{mb(bin0)} → #{mb(bin1)}",
        "#{mb(rss0)} → #{mb(rss_max)} → #{mb(rss1)}"
      ])
    )
  end

  defp mailbox_len, do: self() |> Process.info(:message_queue_len) |> elem(1)

  defp gc do
    for p <- Process.list(), do: :erlang.garbage_collect(p)
    :ok
  end

  defp python_codec do
    {out, 0} =
      System.cmd("python3", ["-c", "from snakepit_bridge import codec; print(codec.NAME)"],
        env: [{"PYTHONPATH", Path.join(:code.priv_dir(:snakepit), "python")}]
      )

    String.trim(out)
  end
end

Bench.Stream.run()
