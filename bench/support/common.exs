defmodule Bench.Common do
  @moduledoc false
  # Helpers shared by the benches (stream, sessions, payload, bridge_ab): interleaved
  # rounds, percentiles, table rows, the machine's state.

  # Runs `measure` for each candidate in each round, alternating which goes
  # first, so that background noise hits all alike. Returns a map of
  # candidate name to the list of its samples, one per round (newest first).
  def interleave(rounds, candidates, measure) do
    Enum.reduce(1..rounds, %{}, fn round, acc ->
      order = if rem(round, 2) == 0, do: Enum.reverse(candidates), else: candidates

      Enum.reduce(order, acc, fn {name, run}, acc ->
        sample = measure.(run)
        Map.update(acc, name, [sample], &[sample | &1])
      end)
    end)
  end

  # Calls/s of `call.(args)` from `callers` processes looping for `ms`.
  def calls_per_s(call, args, callers, ms) do
    deadline = System.monotonic_time(:millisecond) + ms

    1..callers
    |> Enum.map(fn _ -> Task.async(fn -> call_loop(call, args, deadline, 0) end) end)
    |> Enum.map(&Task.await(&1, ms + 30_000))
    |> Enum.sum()
    |> Kernel./(ms / 1000)
  end

  defp call_loop(call, args, deadline, n) do
    if System.monotonic_time(:millisecond) < deadline do
      call.(args)
      call_loop(call, args, deadline, n + 1)
    else
      n
    end
  end

  def pct(sorted, p), do: Enum.at(sorted, min(length(sorted) - 1, div(length(sorted) * p, 100)))
  def median(xs), do: xs |> Enum.sort() |> Enum.at(div(length(xs), 2))

  # Native time units (integer or float) to µs.
  def to_us(native), do: native * 1_000_000 / System.convert_time_unit(1, :second, :native)
  def us(native), do: "#{Float.round(to_us(native), 1)}"
  def ratio(a, b), do: "#{Float.round(a / b, 2)}"
  def mb(bytes), do: "#{Float.round(bytes / 1_048_576, 1)}"
  def row(cells), do: "| " <> Enum.join(cells, " | ") <> " |"
  def rule(n), do: row(List.duplicate("---", n))
  def env_int(name, default), do: String.to_integer(System.get_env(name, "#{default}"))
  def loadavg, do: File.read!("/proc/loadavg") |> String.trim()

  # Resident memory of an OS process, from /proc (nil if it is gone).
  def rss_bytes(os_pid) do
    case File.read("/proc/#{os_pid}/status") do
      {:ok, text} ->
        [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, text)
        String.to_integer(kb) * 1024

      {:error, _} ->
        nil
    end
  end

  # CPU time used so far by the OS processes `pids` (all their threads), in
  # ns, from /proc/<pid>/task/<tid>/schedstat; processes gone count 0.
  def cpu_ns(pids) do
    for pid <- pids,
        {:ok, tids} <- [File.ls("/proc/#{pid}/task")],
        tid <- tids,
        {:ok, stat} <- [File.read("/proc/#{pid}/task/#{tid}/schedstat")],
        reduce: 0 do
      acc -> acc + (stat |> String.split() |> hd() |> String.to_integer())
    end
  end

  def machine_line(extra) do
    "#{System.schedulers_online()} schedulers, OTP #{System.otp_release()}, " <>
      "Elixir #{System.version()}, #{extra}, load average before: #{loadavg()}"
  end

  # bench/support/raw_pipe_echo.c, compiled once into _build/bench/; nil
  # (after printing `missing`) without a C compiler.
  def c_echo(missing) do
    cc = System.find_executable("cc")
    out = Path.join([Mix.Project.build_path(), "bench", "raw_pipe_echo"])
    src = Path.join(__DIR__, "raw_pipe_echo.c")

    cond do
      cc == nil ->
        IO.puts(missing)
        nil

      File.exists?(out) and File.stat!(out).mtime >= File.stat!(src).mtime ->
        out

      true ->
        File.mkdir_p!(Path.dirname(out))
        {_, 0} = System.cmd(cc, ["-O2", "-o", out, src], stderr_to_stdout: true)
        out
    end
  end

  # `n` round trips of `size` bytes by the C echo's own driver, outside the
  # BEAM: the time of each, in native units.
  def c_drive(exe, size, n) do
    {out, 0} = System.cmd(exe, ["drive", "#{size}", "#{n}"])

    out
    |> String.split()
    |> Enum.map(&System.convert_time_unit(String.to_integer(&1), :nanosecond, :native))
  end

  # The OS pids (strings) descending from `root`, from the ppid links in
  # /proc/*/stat.
  def descendants(root) do
    parents =
      for dir <- File.ls!("/proc"),
          String.match?(dir, ~r/^\d+$/),
          {:ok, stat} <- [File.read("/proc/#{dir}/stat")],
          # The command, in parentheses, may itself hold ") ": the state and
          # the ppid follow the last one.
          [_, ppid] <- [Regex.run(~r/^.*\) \S+ (\d+)/s, stat)] do
        {dir, ppid}
      end

    collect(["#{root}"], parents, [])
  end

  defp collect([], _parents, acc), do: acc

  defp collect([pid | rest], parents, acc) do
    children = for {child, ^pid} <- parents, do: child
    collect(children ++ rest, parents, children ++ acc)
  end

  # A `{:packet, 4}` Port to `exe` (an echo: bench/support/raw_pipe_echo.*).
  def packet_port(exe, args) do
    Port.open({:spawn_executable, exe}, [:binary, {:packet, 4}, args: args])
  end

  # One round trip of `bin` through a packet_port/2 echo.
  def port_echo(port, bin) do
    true = Port.command(port, bin)
    size = byte_size(bin)

    receive do
      {^port, {:data, out}} when byte_size(out) == size -> :ok
    after
      300_000 -> raise "raw echo did not answer"
    end
  end
end
