# numpy float32 arrays between Python and Elixir: how
# many GB/s a `%Snakepit.Tensor{}` crosses at, each way, against the floor of
# moving the same bytes between two processes and within one.
#
#   mix run bench/tensor.exs                     (1 MB, 100 MB, 1 GB; ROUNDS=7)
#   SIZES=1MB,100MB ROUNDS=9 mix run bench/tensor.exs
#   SIZES=1GB BIG_ROUNDS=5 mix run bench/tensor.exs
#
# SIZES takes bytes, or numbers with MB / GB (10^6, 10^9). Sizes of 512 MB
# and more run BIG_ROUNDS rounds (default 3), and only if MemAvailable is at
# least 8 times the size (the bytes are held at once by the Elixir array,
# frames, the worker, answers, the memcpy copy and the raw echoes).
#
# One worker, one caller. Each round runs every row once, in alternating
# order (A B C ... then reversed); a round's figure is the median of its
# calls (a few for 1 MB, one for larger sizes). Rows:
#
#   py->ex        `execute("cached_tensor", %{n: n})`: the worker returns a
#                 numpy float32 array of N bytes that it made on the first
#                 call (untimed), so only the transfer into a
#                 `%Snakepit.Tensor{}` is timed
#   ex->py        `execute("tensor_nbytes", %{t: tensor})` with a tensor of N
#                 bytes of float32: the worker gets a numpy array and answers
#                 with its `nbytes` only
#   round trip    `execute("tensor_echo", %{t: tensor})`: there and back
#   py port echo  a `{:packet, 4}` Port to bench/support/raw_pipe_echo.py
#                 echoing N bytes (Python pipe I/O, no codec, no numpy)
#   c pipe        the physical floor: bench/support/raw_pipe_echo.c driving
#                 its own C echo child over a pipe pair, outside the BEAM
#                 (compiled with `cc` into _build/bench/; the row is skipped
#                 without `cc`, and the ratios are then to py port echo)
#   memcpy        `:binary.copy/1` of N bytes in the BEAM (one process),
#                 including the allocation of the copy: at 1 GB fresh pages
#                 (page faults) dominate it, as they do for any answer that
#                 lands in new memory
#
# GB/s is 10^9 payload bytes per second of one transfer: for the echoes
# (round trip, py port echo, c pipe) a transfer is half the round trip, so
# every row is comparable. Shown: p50 over rounds, the min–max of the
# rounds, the p50 time of one transfer, and p50 GB/s as a fraction of the
# c pipe floor and of memcpy.
#
# The Snakepit rows use a pool with default settings. When a call fails with
# them (today: frames past the 64 MiB `:max_frame_bytes`), the failure is
# printed, and a second pool that differs only by `max_frame_bytes: 256 MiB`
# is tried for sizes that fit in it; the `pool` column says which one ran.
# The options of both pools (as validated, with the frame and shared-memory
# ones in full) are printed first, so the run records what main did.
#
# The adapter is bench/support/python/snakepit_bench_tensor_adapter.py (on the
# pool's `:python_path`); numpy must be installed.

Code.require_file("support/common.exs", __DIR__)

defmodule Bench.Tensor do
  import Bench.Common

  @adapter "snakepit_bench_tensor_adapter.TensorBenchAdapter"
  @sizes [1_000_000, 100_000_000, 1_000_000_000]
  @big 512_000_000
  @big_frame 256 * 1024 * 1024
  # Headroom for the envelope around the array in a frame.
  @envelope 4096
  @timeout 600_000
  @ops ["py->ex", "ex->py", "round trip"]

  def run do
    rounds = env_int("ROUNDS", 7)
    big_rounds = env_int("BIG_ROUNDS", 3)

    IO.puts("# Snakepit tensor benchmark (numpy float32 <-> %Snakepit.Tensor{})")
    IO.puts(machine_line("#{rounds} rounds (#{big_rounds} from #{gb(@big)})"))
    binary_start = binary_memory()

    bench_python = Path.expand("support/python", __DIR__)
    base = [adapter: @adapter, size: 1, python_path: [bench_python]]

    pools = [
      {:tensor_defaults, "defaults", base},
      {:tensor_frame, "max_frame 256 MiB", base ++ [max_frame_bytes: @big_frame]}
    ]

    IO.puts("\n## Pools\n")

    pids =
      for {name, label, opts} <- pools do
        {:ok, pid} = Snakepit.Pool.start_link([name: name] ++ opts)
        :ok = Snakepit.await_ready(name, 60_000)
        IO.puts("- #{label} (#{inspect(name)}): #{describe(opts)}")
        pid
      end

    pipe = pipe_port()
    c_echo = c_echo("(no cc: no c pipe row; ratios are to the py port echo)")
    # Warm every path up (tiny arrays).
    warm = ones(16)
    for {name, _, _} <- pools, op <- @ops, do: {:ok, _} = call(name, op, warm)
    pipe_echo(pipe, :binary.copy(<<0>>, 16))

    IO.puts("\n## GB/s per transfer (p50 over rounds [min–max]), 1 worker, 1 caller\n")

    IO.puts(
      row(["size", "row", "pool", "GB/s p50", "min–max", "p50 ms", "/ pipe floor", "/ memcpy"])
    )

    IO.puts(rule(8))

    for size <- sizes() do
      r = if size >= @big, do: big_rounds, else: rounds
      one_size(size, r, pools, pipe, c_echo)
    end

    IO.puts(
      "\nRows that failed are listed above their size's table rows. " <>
        "(/ pipe floor: p50 GB/s over the c pipe's; 1.0 is the floor.)"
    )

    Port.close(pipe)
    Enum.each(pids, &GenServer.stop/1)
    :erlang.garbage_collect()

    IO.puts(
      "\nleak check, :erlang.memory(:binary): #{mb(binary_start)} MiB at the start, " <>
        "#{settled(binary_start)} at the end"
    )

    IO.puts("load average after the run: #{loadavg()}")
  end

  ## One size

  defp one_size(size, rounds, pools, pipe, c_echo) do
    available = mem_available()

    if available != nil and available < 8 * size do
      IO.puts(
        row([gb(size), "skipped: MemAvailable #{gb(available)} < 8 x size", "", "", "", "", "", ""])
      )
    else
      before = binary_memory()
      measure(size, rounds, pools, pipe, c_echo)
      for {name, _, _} <- pools, do: Snakepit.execute("drop_cache", %{}, pool: name)

      IO.puts(
        row([
          gb(size),
          "binary memory #{mb(before)} -> #{settled(before)}; worker RSS " <>
            Enum.map_join(pools, ", ", fn {name, label, _} -> "#{label} #{worker_rss(name)}" end),
          "",
          "",
          "",
          "",
          "",
          ""
        ])
      )
    end
  end

  # The array exists only in this call: it is garbage once it returns.
  defp measure(size, rounds, pools, pipe, c_echo) do
    tensor = ones(div(size, 4))
    data = tensor.data

    {snakepit, failures} = choose_pools(tensor, pools)
    for line <- failures, do: IO.puts(row([gb(size), line, "", "", "", "", "", ""]))

    n = if size <= 10_000_000, do: 9, else: 1

    candidates =
      Enum.map(snakepit, fn {op, pool, label} ->
        {{op, label}, timed(n, fn -> call_timed(pool, op, tensor) end)}
      end) ++
        [{{"py port echo", "-"}, timed(n, fn -> div(pipe_echo(pipe, data), 2) end)}] ++
        c_pipe(c_echo, size, n) ++
        [{{"memcpy", "-"}, timed(n, fn -> memcpy(data) end)}]

    samples = interleave(rounds, candidates, fn run -> run.() end)
    floor = p50_gbs(size, samples[{"c pipe", "-"}] || samples[{"py port echo", "-"}])
    copy = p50_gbs(size, samples[{"memcpy", "-"}])

    for {{name, label} = key, _} <- candidates do
      times = samples[key]
      gbs = times |> Enum.map(&gbs(size, &1)) |> Enum.sort()
      p50 = p50_gbs(size, times)

      IO.puts(
        row([
          gb(size),
          name,
          label,
          f2(p50),
          "#{f2(hd(gbs))}–#{f2(List.last(gbs))}",
          "#{Float.round(to_us(median(times)) / 1000, 2)}",
          f2(p50 / floor),
          f2(p50 / copy)
        ])
      )
    end

    :ok
  end

  defp ones(n), do: Snakepit.Tensor.new(:binary.copy(<<1.0::float-32-little>>, n), {:f, 32}, {n})

  # For each row, the first pool whose probe call succeeds (defaults first;
  # the 256 MiB pool only for sizes that fit in its frames). The probe also
  # makes the worker's cached array. Returns the rows to time and the lines
  # that say what failed.
  defp choose_pools(tensor, pools) do
    size = byte_size(tensor.data)
    usable = Enum.filter(pools, fn {name, _, _} -> fits?(name, size) end)

    Enum.reduce(@ops, {[], []}, fn op, {rows, failures} ->
      {found, errors} =
        Enum.reduce_while(usable, {nil, []}, fn {name, label, _}, {nil, errors} ->
          case call(name, op, tensor) do
            {:ok, _} -> {:halt, {{op, name, label}, errors}}
            {:error, e} -> {:cont, {nil, errors ++ ["#{op} FAILED with #{label}: #{message(e)}"]}}
          end
        end)

      errors =
        if found != nil or length(usable) == length(pools),
          do: errors,
          else: errors ++ ["#{op}: no Snakepit row (larger than the 256 MiB pool's frames)"]

      {if(found, do: rows ++ [found], else: rows), failures ++ errors}
    end)
  end

  defp fits?(:tensor_defaults, _size), do: true
  defp fits?(:tensor_frame, size), do: size + @envelope <= @big_frame

  defp message(%Snakepit.Error{category: c, message: m}), do: "#{c}: #{m}"
  defp message(other), do: inspect(other, limit: 5)

  ## Calls

  defp execute(pool, "py->ex", tensor),
    do:
      Snakepit.execute("cached_tensor", %{n: elem(tensor.shape, 0)}, pool: pool, timeout: @timeout)

  defp execute(pool, "ex->py", tensor),
    do: Snakepit.execute("tensor_nbytes", %{t: tensor}, pool: pool, timeout: @timeout)

  defp execute(pool, "round trip", tensor),
    do: Snakepit.execute("tensor_echo", %{t: tensor}, pool: pool, timeout: @timeout)

  # An untimed call (the probe), checked by the size of its answer.
  defp call(pool, op, tensor) do
    size = byte_size(tensor.data)

    case execute(pool, op, tensor) do
      {:ok, %Snakepit.Tensor{data: data}} when byte_size(data) == size -> {:ok, size}
      {:ok, ^size} -> {:ok, size}
      {:ok, other} -> {:error, "unexpected answer #{inspect(other, limit: 5)}"}
      error -> error
    end
  end

  # The time of one transfer of the tensor's bytes (half the round trip for
  # the echo). Answers are checked by size only.
  defp call_timed(pool, op, tensor) do
    size = byte_size(tensor.data)
    t0 = System.monotonic_time()
    {:ok, out} = execute(pool, op, tensor)
    t = System.monotonic_time() - t0

    case out do
      %Snakepit.Tensor{data: data} when byte_size(data) == size -> :ok
      ^size -> :ok
    end

    if op == "round trip", do: div(t, 2), else: t
  end

  # `n` calls of `one` (each returning its time), with a garbage collection
  # after each, untimed, so no answer outlives its call; the median time.
  defp timed(n, one) do
    fn ->
      times =
        for _ <- 1..n do
          t = one.()
          :erlang.garbage_collect()
          t
        end

      median(times)
    end
  end

  defp memcpy(data) do
    t0 = System.monotonic_time()
    copy = :binary.copy(data)
    t = System.monotonic_time() - t0
    true = byte_size(copy) == byte_size(data)
    t
  end

  ## The pipe floor

  defp pipe_port do
    script = Path.join([__DIR__, "support", "raw_pipe_echo.py"])

    Port.open({:spawn_executable, System.find_executable("python3")}, [
      :binary,
      {:packet, 4},
      args: [script]
    ])
  end

  # Round-trip time of an echo of `bin`.
  defp pipe_echo(port, bin) do
    size = byte_size(bin)
    t0 = System.monotonic_time()
    true = Port.command(port, bin)

    receive do
      {^port, {:data, out}} when byte_size(out) == size -> System.monotonic_time() - t0
    after
      @timeout -> raise "raw pipe echo did not answer"
    end
  end

  # The physical floor: bench/support/raw_pipe_echo.c driving its own echo
  # child over a pipe pair, outside the BEAM, N + 1 round trips per round (the
  # first, which touches the buffers' pages, is dropped). Half a round trip.
  defp c_pipe(nil, _size, _n), do: []

  defp c_pipe(exe, size, n) do
    run = fn ->
      [_first | times] = c_drive(exe, size, n + 1)
      times |> Enum.map(&div(&1, 2)) |> median()
    end

    [{{"c pipe", "-"}, run}]
  end

  ## Figures

  defp gbs(size, native), do: size / 1.0e9 / (to_us(native) / 1_000_000)
  defp p50_gbs(size, times), do: gbs(size, median(times))
  defp f2(x), do: "#{Float.round(x, 2)}"

  defp gb(bytes) when bytes >= 1_000_000_000, do: "#{Float.round(bytes / 1.0e9, 2)} GB"
  defp gb(bytes) when bytes >= 1_000_000, do: "#{Float.round(bytes / 1.0e6, 1)} MB"
  defp gb(bytes), do: "#{bytes} B"

  defp binary_memory do
    :erlang.garbage_collect()
    :erlang.memory(:binary)
  end

  # Binary memory once it is back within 1 MiB of `before`, polled for up
  # to 2 s: a large answer is freed a few ms after its call returned (a
  # binary freed on another thread than the one that allocated it is
  # handed back to its allocator later), so an immediate reading would
  # count it. Past 2 s it is reported as still held.
  defp settled(before, waited \\ 0) do
    now = binary_memory()

    cond do
      now <= before + 1_048_576 ->
        "#{mb(now)} MiB (after #{waited} ms)"

      waited >= 2_000 ->
        "#{mb(now)} MiB, STILL HELD after #{waited} ms"

      true ->
        Process.sleep(10)
        settled(before, waited + 10)
    end
  end

  defp worker_rss(pool) do
    case Snakepit.list_workers(pool) do
      [%{rss_bytes: rss} | _] when is_integer(rss) -> "#{mb(rss)} MiB"
      _ -> "?"
    end
  end

  defp mem_available do
    with {:ok, text} <- File.read("/proc/meminfo"),
         [_, kb] <- Regex.run(~r/MemAvailable:\s+(\d+) kB/, text) do
      String.to_integer(kb) * 1024
    else
      _ -> nil
    end
  end

  # The options given, then the validated frame and shared-memory settings
  # (any option named *frame* or *shm*, so new ones show up by themselves).
  defp describe(opts) do
    {:ok, config} = Snakepit.Config.validate(opts)

    given =
      opts
      |> Keyword.drop([:adapter, :python_path])
      |> Enum.map_join(", ", fn {k, v} -> "#{k}: #{inspect(v)}" end)

    effective =
      config
      |> Map.from_struct()
      |> Enum.filter(fn {k, _} -> String.contains?(Atom.to_string(k), ["frame", "shm"]) end)
      |> Enum.sort()
      |> Enum.map_join(", ", fn {k, v} -> "#{k}: #{inspect(v)}" end)

    "given #{given}; in effect #{effective}"
  end

  defp sizes do
    case System.get_env("SIZES") do
      nil -> @sizes
      s -> s |> String.split(",", trim: true) |> Enum.map(&parse_size/1)
    end
  end

  defp parse_size(s) do
    case Integer.parse(String.trim(s)) do
      {n, ""} -> n
      {n, unit} when unit in ["MB", "mb"] -> n * 1_000_000
      {n, unit} when unit in ["GB", "gb"] -> n * 1_000_000_000
      _ -> raise ArgumentError, "SIZES: #{inspect(s)} is not bytes, NMB or NGB"
    end
    |> then(fn n -> n - rem(n, 4) end)
  end
end

Bench.Tensor.run()
