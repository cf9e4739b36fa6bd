# A long soak: many calls with kills, timeouts, cancels and floods mixed in,
# watching the BEAM for leaks.
#
#   mix run bench/soak.exs                 (CALLS=1000000 CALLERS=32 SIZE=4)
#   CALLS=20000 mix run bench/soak.exs     (a quick check, ~5 s)
#
# Options (environment): CALLS total calls (default 1_000_000); CALLERS
# concurrent caller processes (32); SIZE workers (4); INTERVAL calls between
# rows (CALLS / 20); KILL_MS ms between SIGKILLs of a random worker (1000,
# 0 for none); FLOOD_LINES lines per flood call (200); PIPELINE the pool's
# `pipeline_depth` (1); MAX_REQUESTS the pool's `max_requests` (infinity);
# SEED for the callers' random choices; STALL seconds without progress
# before the calls in progress are printed (60; the run is aborted after
# 5 x STALL); LOG=console to keep Logger's console output.
#
# It starts a pool of the test adapter plus a flood tool
# (bench/support/python/snakepit_soak_adapter.py) and CALLERS processes that
# each draw calls from this mix until CALLS have been made:
#
#   echo          ~92%  payloads from "ping" to 1 MiB, the answer compared
#   echo_qt         2%  echo with `queue_timeout: 1` (leaves the queue)
#   boom            3%  the tool raises
#   sleep_to      0.5%  sleep(20 ms) with a timeout of 1-15 ms (its answer
#                       may still win when the machine is loaded: shown
#                       as answered_after_timeout)
#   cancel_to     0.5%  until_cancelled with a timeout of 1-15 ms
#   killed_caller   1%  a process calls (until_cancelled, sleep, echo) and is
#                       killed 0-5 ms after its call was submitted
#   noisy         0.5%  the test adapter's two printed lines
#   flood         0.4%  FLOOD_LINES lines via one stderr write, print() per
#                       line, or Python logging (in turn)
#   exit_now     0.02%  the worker exits in the middle of the call
#
# and a killer process SIGKILLs a random ready (idle or busy) worker every
# KILL_MS ms. (Killing starting workers too would stop the pool by design,
# through :max_start_failures, once one slot is hit often enough.)
#
# Every INTERVAL calls (and at least every 30 s) it prints a row: calls and
# calls/s; the BEAM's open fds and threads (/proc/<System.pid()>/fd, /task);
# the live processes carrying this BEAM's mark (Snakepit.Native.marked_processes/1),
# the BEAM's descendants (by parent pid, erl_child_setup's excluded) and how
# many of them are zombies; :erlang.memory(:total) and the BEAM's VmRSS; the
# pool's queued / in_flight / restarts; the message queues of the pool
# process and of Logger; and the age of the oldest call in progress.
#
# At the end, once the pool is quiet: the first and last rows side by side;
# every answer counted by kind and outcome, with unexpected ones flagged
# (any :transport, :validation or :pool error, a timeout or a wrong answer
# where none is expected, a message arriving in a caller's mailbox after its
# call returned, a call that does not return); the stats partition
# (requests == the sum of the ten outcomes); the pool's counters against the
# bench's own counts; then the pool is stopped and no marked process or
# descendant may remain, and fds / threads must be back to where they were
# before the pool started. Floods go through Logger to a counting backend
# (the console backend is removed), so no flood reaches the terminal.
# Exits with status 1 if anything was flagged.
#
# A full run (10^6 calls, defaults) takes 90-140 s here: 91 s (~11,000
# calls/s) at a load average of 0.6-3.2, ~140 s (~7,000 calls/s) at 8-11,
# on 2 vCPUs shared with other test runs. CALLS=20000 takes ~5 s.

defmodule Bench.Soak.LogCounter do
  @moduledoc false
  # A Logger backend that counts events by level and checks flood lines
  # ("soakflood NNNNNN xxx... end") for being whole.
  @behaviour :gen_event
  @table :soak_log_counts

  def table, do: @table

  @impl true
  def init(_), do: {:ok, nil}

  @impl true
  def handle_event({level, _gl, {Logger, message, _ts, _md}}, state) do
    n = :ets.update_counter(@table, {:level, level}, 1, {{:level, level}, 0})
    text = IO.chardata_to_string(message)
    # Worker exits are logged as warnings; errors are kept to be shown.
    if level == :error and n <= 10, do: :ets.insert(@table, {{:error, n}, text})

    case :binary.match(text, "soakflood ") do
      :nomatch ->
        :ok

      {at, _} ->
        line = binary_part(text, at, byte_size(text) - at)
        key = if whole_flood_line?(line), do: :flood_whole, else: :flood_broken
        :ets.update_counter(@table, key, 1, {key, 0})
    end

    {:ok, state}
  end

  def handle_event(_other, state), do: {:ok, state}

  @impl true
  def handle_call(_request, state), do: {:ok, :ok, state}

  @impl true
  def handle_info(_msg, state), do: {:ok, state}

  defp whole_flood_line?(<<"soakflood ", _seq::binary-size(6), " ", rest::binary>>),
    do: String.ends_with?(rest, " end") and String.trim_leading(rest, "x") == " end"

  defp whole_flood_line?(_), do: false
end

defmodule Bench.Soak do
  alias Snakepit.Error

  @pool :soak
  @adapter "snakepit_soak_adapter.SoakAdapter"
  @call_timeout 60_000

  # {kind, weight in 1/10_000}; echo takes the rest.
  @others [
    echo_qt: 200,
    boom: 300,
    sleep_to: 50,
    cancel_to: 50,
    killed_caller: 100,
    noisy: 50,
    flood: 40,
    exit_now: 2
  ]
  @kinds [{:echo, 10_000 - Enum.sum(Keyword.values(@others))} | @others]

  # The outcomes each kind may have. A :worker error is expected for every
  # call that reaches a worker: the killer may SIGKILL it mid-call.
  @expected %{
    echo: [:ok, :worker],
    echo_qt: [:ok, :timeout_queued, :worker],
    boom: [:python_error, :worker],
    sleep_to: [:timeout, :timeout_queued, :worker, :answered_after_timeout],
    cancel_to: [:timeout, :timeout_queued, :worker],
    killed_caller: [:killed, :returned_first],
    noisy: [:ok, :worker],
    flood: [:ok, :worker],
    exit_now: [:worker]
  }

  def run do
    cfg = config()
    header(cfg)
    setup_logger(cfg)
    problems = :ets.new(:soak_problems, [:public, :bag])

    before = sample(cfg, nil)

    {:ok, pool} =
      Snakepit.Pool.start_link(
        name: @pool,
        size: cfg.size,
        adapter: @adapter,
        python_path: [Path.expand("bench/support/python"), Path.expand("test/support/python")],
        pipeline_depth: cfg.pipeline,
        max_requests: cfg.max_requests,
        timeout: @call_timeout
      )

    Process.unlink(pool)
    pool_ref = Process.monitor(pool)
    :ok = Snakepit.await_ready(@pool, 120_000)
    cfg = Map.merge(cfg, %{pool: pool, pool_ref: pool_ref})

    IO.puts("\n## Rows\n")
    IO.puts(row_header())
    IO.puts(row(List.duplicate("---", length(columns()))))
    first = sample(cfg, cfg.t0)
    print_row(first, nil)

    killer = if cfg.kill_ms > 0, do: spawn_link(fn -> killer(cfg, 0, 0) end)
    main = self()

    callers =
      Map.new(1..cfg.callers, fn idx ->
        {pid, ref} = spawn_monitor(fn -> caller(idx, cfg, main) end)
        {ref, {idx, pid}}
      end)

    t_calls = System.monotonic_time(:millisecond)
    run_state = %{last: first, next: cfg.interval, results: %{}, crashed: []}
    {run_state, ended} = drive(cfg, callers, run_state, problems)
    calls_ms = System.monotonic_time(:millisecond) - t_calls

    kills = if killer, do: stop_killer(killer), else: {0, 0}
    # Callers whose pool is gone finish fast, with :pool errors, maybe
    # before its :DOWN was seen.
    ended = if ended == :done, do: pool_down?(pool_ref, problems), else: ended

    pool_alive = ended != :pool_down
    quiet_ms = if pool_alive, do: await_quiet(cfg, 60_000), else: 0
    last = sample(cfg, cfg.t0)
    print_row(last, run_state.last)
    stats = if pool_alive, do: Snakepit.get_stats(@pool)

    done = :atomics.get(cfg.done, 1)
    strays_after = final_mailbox_check(callers, run_state, problems)
    results = Map.values(run_state.results)
    counts = merge_counts(results)

    IO.puts(
      "\n#{done} of #{cfg.calls} calls returned in #{Float.round(calls_ms / 1000, 1)} s " <>
        "(#{round(done / max(calls_ms, 1) * 1000)} calls/s), pool quiet #{quiet_ms} ms later; " <>
        "#{elem(kills, 0)} SIGKILLs sent (#{elem(kills, 1)} found the worker gone); " <>
        "load average now: #{loadavg()}"
    )

    report_answers(counts, results, strays_after, problems)
    if pool_alive, do: report_stats(stats, counts, cfg, ended != :done, problems)

    {stop_ms, clean_ms, after_stop} = stop_pool(cfg, pool_alive)
    report_figures(before, first, last, after_stop, {stop_ms, clean_ms, pool_alive}, problems)
    report_logger(cfg, counts, stats, problems)
    verdict(problems)
  end

  ## Callers

  defp caller(idx, cfg, main) do
    if cfg.seed, do: :rand.seed(:exsss, {cfg.seed, idx, 7})
    acc = caller_loop(idx, cfg, %{counts: %{}, max_ms: %{}, strays: 0, samples: []})
    send(main, {:results, idx, acc})

    receive do
      :final_check ->
        {n, samples} = drain([], 0)
        send(main, {:final, idx, n, samples})
    end
  end

  defp caller_loop(idx, cfg, acc) do
    if :atomics.add_get(cfg.issued, 1, 1) > cfg.calls do
      acc
    else
      kind = pick(@kinds, :rand.uniform(10_000))
      t0 = System.monotonic_time(:millisecond)
      :ets.insert(cfg.inflight, {idx, kind, t0})

      outcome =
        try do
          call(kind, cfg)
        catch
          class, reason -> {:exception, inspect({class, reason}, limit: 10)}
        end

      ms = System.monotonic_time(:millisecond) - t0
      :ets.insert(cfg.inflight, {idx, :idle, 0})
      :atomics.add(cfg.done, 1, 1)

      {outcome, detail} =
        case outcome do
          {o, d} -> {o, d}
          o -> {o, nil}
        end

      acc =
        acc
        |> update_in(
          [:counts],
          &Map.update(&1, {kind, outcome}, {1, detail}, fn {n, d} -> {n + 1, d} end)
        )
        |> update_in([:max_ms], &Map.update(&1, kind, ms, fn m -> max(m, ms) end))

      # Every call gets exactly one answer: nothing may arrive after it.
      {n, samples} = drain([], 0)
      acc = %{acc | strays: acc.strays + n, samples: Enum.take(samples ++ acc.samples, 3)}
      caller_loop(idx, cfg, acc)
    end
  end

  defp drain(samples, n) do
    receive do
      msg -> drain(Enum.take([inspect(msg, limit: 8, printable_limit: 60) | samples], 3), n + 1)
    after
      0 -> {n, samples}
    end
  end

  defp pick([{kind, w} | rest], r), do: if(r <= w, do: kind, else: pick(rest, r - w))

  defp call(:echo, _cfg) do
    value = payload()
    check_echo(exec("echo", %{value: value}, timeout: @call_timeout), value)
  end

  defp call(:echo_qt, _cfg) do
    exec("echo", %{value: "queued"}, queue_timeout: 1) |> check_echo("queued")
  end

  defp call(:boom, _cfg), do: exec("boom", %{message: "soak"}) |> classify()

  # The answer can win: when the caller acts on its timeout only after the
  # 20 ms sleep has answered (a scheduler busy elsewhere), execute/3 returns
  # that answer (cancel says :replied). Counted apart, as expected.
  defp call(:sleep_to, _cfg) do
    timeout = :rand.uniform(15)
    t0 = System.monotonic_time(:millisecond)

    case exec("sleep", %{ms: 20}, timeout: timeout) do
      {:ok, 20} ->
        ms = System.monotonic_time(:millisecond) - t0
        {:answered_after_timeout, "timeout #{timeout} ms, returned after #{ms} ms"}

      other ->
        classify(other)
    end
  end

  defp call(:cancel_to, _cfg),
    do: exec("until_cancelled", %{timeout_ms: 10_000}, timeout: :rand.uniform(15)) |> classify()

  defp call(:noisy, _cfg), do: exec("noisy", %{text: "soak"}) |> check_echo("soak")

  defp call(:flood, cfg) do
    via = Enum.at(["stderr", "print", "log"], :atomics.add_get(cfg.floods, 1, 1) |> rem(3))
    exec("flood", %{lines: cfg.flood_lines, via: via}) |> check_echo(cfg.flood_lines)
  end

  defp call(:exit_now, _cfg), do: exec("exit_now", %{code: 3}) |> classify()

  # The call is submitted (the process waits in execute/3's receive), then
  # its process is killed 0-5 ms later.
  defp call(:killed_caller, _cfg) do
    {tool, args} =
      Enum.random([
        {"until_cancelled", %{timeout_ms: 10_000}},
        {"sleep", %{ms: 20}},
        {"echo", %{value: "x"}}
      ])

    {pid, ref} = spawn_monitor(fn -> exec(tool, args) end)

    case wait_until_waiting(pid, System.monotonic_time(:millisecond) + 5_000) do
      :waiting ->
        delay = :rand.uniform(6) - 1
        if delay > 0, do: Process.sleep(delay)
        Process.exit(pid, :kill)

      :gone ->
        :ok

      :never_waited ->
        Process.exit(pid, :kill)
    end

    receive do
      {:DOWN, ^ref, :process, _, :killed} -> :killed
      {:DOWN, ^ref, :process, _, :normal} -> :returned_first
      {:DOWN, ^ref, :process, _, other} -> {:caller_crashed, inspect(other, limit: 10)}
    end
  end

  defp wait_until_waiting(pid, deadline) do
    case Process.info(pid, :status) do
      {:status, :waiting} ->
        :waiting

      nil ->
        :gone

      _ ->
        if System.monotonic_time(:millisecond) > deadline do
          :never_waited
        else
          :erlang.yield()
          wait_until_waiting(pid, deadline)
        end
    end
  end

  defp exec(tool, args, opts \\ []), do: Snakepit.execute(tool, args, [pool: @pool] ++ opts)

  defp check_echo({:ok, value}, value), do: :ok

  defp check_echo({:ok, other}, _),
    do: {:wrong_answer, inspect(other, limit: 5, printable_limit: 40)}

  defp check_echo(other, _), do: classify(other)

  defp classify({:ok, value}), do: {:ok, inspect(value, limit: 5)}

  defp classify({:error, %Error{category: :timeout, details: details}}),
    do: if(details[:queue], do: :timeout_queued, else: :timeout)

  defp classify({:error, %Error{category: category, message: message}}),
    do: {category, String.slice(message, 0, 160)}

  # Echo payloads: mostly small, some above the pipe buffer (64 KiB), a few
  # of 1 MiB.
  defp payload do
    payloads = :persistent_term.get({__MODULE__, :payloads})

    case :rand.uniform(1000) do
      r when r <= 400 -> "ping"
      r when r <= 600 -> elem(payloads.maps, rem(r, tuple_size(payloads.maps)))
      r when r <= 750 -> Enum.at([42, -7, 2.5, nil, true, [1, "a", [2.0]]], rem(r, 6))
      r when r <= 953 -> elem(payloads.small, rem(r, tuple_size(payloads.small)))
      r when r <= 998 -> payloads.over_pipe
      _ -> payloads.mib
    end
  end

  defp make_payloads do
    :persistent_term.put({__MODULE__, :payloads}, %{
      maps:
        List.to_tuple(
          for n <- 1..8,
              do: %{
                "n" => n,
                "s" => String.duplicate("é", n),
                "l" => [1, 2.5, nil, true, "x"],
                "m" => %{"k" => [n]}
              }
        ),
      small:
        List.to_tuple(
          for n <- [1, 10, 100, 500, 1000, 2048, 4096], do: :crypto.strong_rand_bytes(n)
        ),
      over_pipe: :crypto.strong_rand_bytes(64 * 1024 + 1),
      mib: :crypto.strong_rand_bytes(1024 * 1024)
    })
  end

  ## The killer

  defp killer(cfg, sent, gone) do
    receive do
      {:stop, from} -> send(from, {:killer, sent, gone})
    after
      cfg.kill_ms ->
        case Snakepit.list_workers(@pool) do
          workers when is_list(workers) ->
            kill(cfg, sent, gone, Enum.filter(workers, &(&1.state in [:idle, :busy])))

          _ ->
            killer(cfg, sent, gone)
        end
    end
  end

  # A worker killed while it starts counts as a failed start, and enough
  # of those in a row stop the pool (:max_start_failures): only ready
  # workers are killed.
  defp kill(cfg, sent, gone, []), do: killer(cfg, sent, gone)

  defp kill(cfg, sent, gone, workers) do
    %{os_pid: os_pid} = Enum.random(workers)
    {_, status} = System.cmd("kill", ["-KILL", "#{os_pid}"], stderr_to_stdout: true)
    killer(cfg, sent + 1, gone + if(status == 0, do: 0, else: 1))
  end

  defp stop_killer(killer) do
    send(killer, {:stop, self()})
    receive do: ({:killer, sent, gone} -> {sent, gone})
  end

  ## Driving and rows

  defp drive(cfg, callers, st, problems) do
    drive(cfg, callers, st, problems, {0, System.monotonic_time(:millisecond)}, false)
  end

  defp drive(cfg, callers, st, problems, progress, warned) do
    if map_size(st.results) + length(st.crashed) == map_size(callers) do
      {st, :done}
    else
      receive do
        {:DOWN, ref, :process, _pid, reason} when ref == cfg.pool_ref ->
          IO.puts("\nTHE POOL STOPPED: #{inspect(reason, limit: 20)}")

          :ets.insert(
            problems,
            {:pool_down, "the pool stopped during the run: #{inspect(reason, limit: 20)}"}
          )

          Enum.each(callers, fn {_, {_, pid}} -> Process.exit(pid, :kill) end)
          {st, :pool_down}

        {:results, idx, acc} ->
          drive(
            cfg,
            callers,
            %{st | results: Map.put(st.results, idx, acc)},
            problems,
            progress,
            warned
          )

        {:DOWN, ref, :process, _pid, reason} when is_map_key(callers, ref) ->
          {idx, _} = callers[ref]

          :ets.insert(
            problems,
            {:caller_crashed, "caller #{idx} died: #{inspect(reason, limit: 10)}"}
          )

          drive(cfg, callers, %{st | crashed: [idx | st.crashed]}, problems, progress, warned)
      after
        250 ->
          done = :atomics.get(cfg.done, 1)
          now = System.monotonic_time(:millisecond)
          st = maybe_row(cfg, st, done, now)
          {last_done, since} = progress

          cond do
            done != last_done ->
              drive(cfg, callers, st, problems, {done, now}, false)

            now - since > 5 * cfg.stall * 1000 ->
              IO.puts("\nNO PROGRESS for #{div(now - since, 1000)} s: aborting the run.")
              print_in_progress(cfg, now)

              :ets.insert(
                problems,
                {:hang, "no call returned for #{div(now - since, 1000)} s; run aborted"}
              )

              Enum.each(callers, fn {_, {_, pid}} -> Process.exit(pid, :kill) end)
              {st, :hang}

            now - since > cfg.stall * 1000 and not warned ->
              IO.puts("\nno call returned for #{div(now - since, 1000)} s; calls in progress:")
              print_in_progress(cfg, now)
              :ets.insert(problems, {:stall, "no call returned for more than #{cfg.stall} s"})
              drive(cfg, callers, st, problems, progress, true)

            true ->
              drive(cfg, callers, st, problems, progress, warned)
          end
      end
    end
  end

  # A pool that is stopping is already gone from get_stats/1.
  defp pool_down?(pool_ref, problems) do
    case Snakepit.get_stats(@pool) do
      %{} ->
        :done

      {:error, _} ->
        reason =
          receive do
            {:DOWN, ^pool_ref, :process, _, reason} -> reason
          after
            60_000 -> :still_stopping_after_60_s
          end

        IO.puts("\nTHE POOL STOPPED: #{inspect(reason, limit: 20)}")
        :ets.insert(problems, {:pool_down, "the pool stopped: #{inspect(reason, limit: 20)}"})
        :pool_down
    end
  end

  defp maybe_row(cfg, st, done, now) do
    if done >= st.next or now - cfg.t0 - st.last.t_ms >= 30_000 do
      s = sample(cfg, cfg.t0)
      print_row(s, st.last)
      next = if done >= st.next, do: (div(done, cfg.interval) + 1) * cfg.interval, else: st.next
      %{st | last: s, next: next}
    else
      st
    end
  end

  defp print_in_progress(cfg, now) do
    cfg.inflight
    |> :ets.tab2list()
    |> Enum.reject(fn {_, kind, _} -> kind == :idle end)
    |> Enum.sort_by(fn {_, _, t0} -> t0 end)
    |> Enum.take(10)
    |> Enum.each(fn {idx, kind, t0} -> IO.puts("  caller #{idx}: #{kind} for #{now - t0} ms") end)

    IO.puts("  stats: #{inspect(Map.drop(Snakepit.get_stats(@pool), [:errors]))}")
  end

  # Waits until no call is queued or in flight and every worker is idle.
  defp await_quiet(cfg, limit) do
    t0 = System.monotonic_time(:millisecond)

    Stream.repeatedly(fn ->
      quiet =
        case Snakepit.get_stats(@pool) do
          %{} = s -> s.queued == 0 and s.in_flight == 0 and s.idle == cfg.size
          {:error, _} -> true
        end

      if not quiet, do: Process.sleep(50)
      quiet
    end)
    |> Enum.find(fn quiet -> quiet or System.monotonic_time(:millisecond) - t0 > limit end)

    System.monotonic_time(:millisecond) - t0
  end

  defp final_mailbox_check(callers, st, problems) do
    alive = for {_, {idx, pid}} <- callers, idx not in st.crashed, Process.alive?(pid), do: pid
    Enum.each(alive, &send(&1, :final_check))

    finals =
      for _ <- alive do
        receive do
          {:final, idx, n, samples} -> {idx, n, samples}
        after
          10_000 -> {:none, 0, []}
        end
      end

    for {idx, n, samples} <- finals, n > 0 do
      :ets.insert(
        problems,
        {:stray,
         "caller #{idx}: #{n} message(s) arrived after its last call: #{Enum.join(samples, "; ")}"}
      )
    end

    finals |> Enum.map(&elem(&1, 1)) |> Enum.sum()
  end

  ## Samples

  defp sample(cfg, t0) do
    os = System.pid()
    {children, zombies} = descendants(String.to_integer(os))

    stats =
      case t0 && Snakepit.get_stats(@pool) do
        %{} = stats -> stats
        _ -> %{}
      end

    %{
      t_ms: if(t0, do: System.monotonic_time(:millisecond) - t0, else: 0),
      done: :atomics.get(cfg.done, 1),
      fds: length(File.ls!("/proc/#{os}/fd")),
      threads: length(File.ls!("/proc/#{os}/task")),
      marked: length(Snakepit.Native.marked_processes(Snakepit.Native.owner_mark())),
      children: children,
      zombies: zombies,
      memory: :erlang.memory(:total),
      rss: rss_kb(os) * 1024,
      queued: stats[:queued],
      in_flight: stats[:in_flight],
      restarts: stats[:restarts],
      pool_mq: mq(cfg[:pool]),
      logger_mq: mq(Process.whereis(Logger)),
      oldest: oldest(cfg.inflight)
    }
  end

  defp mq(nil), do: nil

  defp mq(pid) do
    case Process.info(pid, :message_queue_len) do
      {_, n} -> n
      nil -> nil
    end
  end

  defp oldest(table) do
    now = System.monotonic_time(:millisecond)

    :ets.foldl(
      fn
        {_, :idle, _}, acc -> acc
        {_, _, t0}, acc -> max(acc, now - t0)
      end,
      0,
      table
    )
  end

  defp rss_kb(os) do
    "/proc/#{os}/status"
    |> File.read!()
    |> then(&Regex.run(~r/VmRSS:\s+(\d+) kB/, &1, capture: :all_but_first))
    |> hd()
    |> String.to_integer()
  end

  # The BEAM's descendants by parent pid, without erl_child_setup and what
  # it runs (System.cmd), and how many of them are zombies.
  defp descendants(beam) do
    procs =
      for entry <- File.ls!("/proc"),
          Regex.match?(~r/^\d+$/, entry),
          {:ok, stat} <- [File.read("/proc/#{entry}/stat")],
          [_, comm, rest] <- [Regex.run(~r/^\d+ \((.*)\) (.*)$/s, stat)],
          [state, ppid | _] <- [String.split(rest, " ", parts: 3)],
          do: {String.to_integer(entry), String.to_integer(ppid), state, comm}

    by_parent = Enum.group_by(procs, &elem(&1, 1))
    found = walk(by_parent, [beam], [])
    {length(found), Enum.count(found, fn {_, _, state, _} -> state == "Z" end)}
  end

  defp walk(_by_parent, [], acc), do: acc

  defp walk(by_parent, [pid | rest], acc) do
    kids =
      by_parent
      |> Map.get(pid, [])
      |> Enum.reject(fn {_, _, _, comm} -> comm == "erl_child_setup" end)

    walk(by_parent, Enum.map(kids, &elem(&1, 0)) ++ rest, kids ++ acc)
  end

  defp columns,
    do:
      ~w(s calls calls/s fds threads marked children zombies erlang_MB RSS_MB queued in_flight restarts pool_mq logger_mq oldest_ms)

  defp row_header, do: row(columns())

  defp print_row(s, prev) do
    rate =
      if prev && s.t_ms > prev.t_ms,
        do: "#{round((s.done - prev.done) / (s.t_ms - prev.t_ms) * 1000)}",
        else: "-"

    IO.puts(
      row([
        "#{Float.round(s.t_ms / 1000, 1)}",
        "#{s.done}",
        rate,
        "#{s.fds}",
        "#{s.threads}",
        "#{s.marked}",
        "#{s.children}",
        "#{s.zombies}",
        mb(s.memory),
        mb(s.rss),
        "#{s.queued}",
        "#{s.in_flight}",
        "#{s.restarts}",
        "#{s.pool_mq}",
        "#{s.logger_mq}",
        "#{s.oldest}"
      ])
    )
  end

  ## Reports

  defp report_answers(counts, results, strays_after, problems) do
    IO.puts("\n## Answers by kind\n")
    IO.puts(row(["kind", "outcome", "count", "longest call ms", "expected", "example"]))
    IO.puts(row(List.duplicate("---", 6)))

    max_ms =
      Enum.reduce(results, %{}, fn r, acc ->
        Map.merge(acc, r.max_ms, fn _, a, b -> max(a, b) end)
      end)

    for {{kind, outcome}, {n, detail}} <- Enum.sort(counts) do
      ok? = outcome in Map.fetch!(@expected, kind)
      name = if is_atom(outcome), do: "#{outcome}", else: inspect(outcome)
      example = if detail, do: String.replace(detail, "|", "\\|"), else: ""

      unless ok? do
        :ets.insert(problems, {:unexpected, "#{kind}: #{n} x #{name} #{example}"})
      end

      IO.puts(
        row([
          "#{kind}",
          name,
          "#{n}",
          "#{max_ms[kind]}",
          if(ok?, do: "yes", else: "**NO**"),
          example
        ])
      )
    end

    strays = Enum.sum(Enum.map(results, & &1.strays))

    for r <- results, r.strays > 0 do
      :ets.insert(
        problems,
        {:stray,
         "#{r.strays} message(s) in a caller's mailbox after a call returned: #{Enum.join(r.samples, "; ")}"}
      )
    end

    IO.puts(
      "\nMessages in a caller's mailbox after its call returned: #{strays} during the run, " <>
        "#{strays_after} at the end."
    )
  end

  defp report_stats(stats, counts, cfg, aborted, problems) do
    outcomes =
      ~w(completed python_errors validation_errors worker_errors transport_errors timeouts queue_timeouts cancelled rejected stopped)a

    sum = Enum.sum(Enum.map(outcomes, &stats[&1]))

    ours = fn pred ->
      counts
      |> Enum.filter(fn {{k, o}, _} -> pred.(k, o) end)
      |> Enum.map(fn {_, {n, _}} -> n end)
      |> Enum.sum()
    end

    not_killed = fn o -> fn k, oo -> k != :killed_caller and oo in List.wrap(o) end end
    ok = ours.(not_killed.([:ok, :wrong_answer, :answered_after_timeout]))
    python = ours.(not_killed.(:python_error))
    worker = ours.(not_killed.(:worker))
    timeouts = ours.(not_killed.([:timeout, :timeout_queued]))
    killed = ours.(fn k, _ -> k == :killed_caller end)

    IO.puts("\n## Pool counters (get_stats once quiet) against the bench's own counts\n")
    IO.puts(row(["counter", "pool", "bench", "note"]))
    IO.puts(row(List.duplicate("---", 4)))
    IO.puts(row(["requests", "#{stats.requests}", "#{cfg.calls}", "every call reaches the pool"]))
    IO.puts(row(["sum of the ten outcomes", "#{sum}", "", "must equal requests"]))
    IO.puts(row(["queued / in_flight", "#{stats.queued} / #{stats.in_flight}", "", "0 once quiet"]))

    IO.puts(
      row([
        "completed",
        "#{stats.completed}",
        "#{ok}",
        "pool's extra: killed callers answered first"
      ])
    )

    IO.puts(row(["python_errors", "#{stats.python_errors}", "#{python}", "equal"]))

    IO.puts(
      row([
        "worker_errors",
        "#{stats.worker_errors}",
        "#{worker}",
        "pool's extra: killed callers whose worker died"
      ])
    )

    IO.puts(
      row([
        "timeouts + queue_timeouts",
        "#{stats.timeouts} + #{stats.queue_timeouts}",
        "#{timeouts}",
        "equal"
      ])
    )

    IO.puts(
      row([
        "cancelled",
        "#{stats.cancelled}",
        "#{killed}",
        "bench: killed callers (all their outcomes)"
      ])
    )

    for k <- [:validation_errors, :transport_errors, :rejected, :stopped],
        do: IO.puts(row(["#{k}", "#{stats[k]}", "", "0"]))

    IO.puts(
      row([
        "restarts / recycles / requeued",
        "#{stats.restarts} / #{stats.recycles} / #{stats.requeued}",
        "",
        ""
      ])
    )

    extra = stats.completed - ok + (stats.worker_errors - worker) + stats.cancelled

    checks = [
      {not aborted and stats.requests == cfg.calls,
       "requests (#{stats.requests}) == calls made (#{cfg.calls})"},
      {stats.requests == sum, "requests (#{stats.requests}) == sum of the ten outcomes (#{sum})"},
      {stats.queued == 0 and stats.in_flight == 0, "nothing queued or in flight once quiet"},
      {stats.python_errors == python, "python_errors == the bench's :python_error answers"},
      {stats.timeouts + stats.queue_timeouts == timeouts, "timeouts == the bench's timeouts"},
      {stats.completed >= ok and stats.worker_errors >= worker and extra == killed,
       "killed callers (#{killed}) == the pool's extra completed + worker_errors + cancelled (#{extra})"},
      {stats.validation_errors + stats.transport_errors + stats.rejected + stats.stopped == 0,
       "no validation / transport / rejected / stopped outcome"}
    ]

    IO.puts("")

    for {good, text} <- checks do
      IO.puts("- #{if good, do: "ok", else: "**FAILED**"}: #{text}")
      unless good, do: :ets.insert(problems, {:stats, text})
    end
  end

  defp stop_pool(cfg, pool_alive) do
    t0 = System.monotonic_time(:millisecond)

    if pool_alive do
      GenServer.stop(cfg.pool, :normal, 120_000)
      receive do: ({:DOWN, ref, _, _, _} when ref == cfg.pool_ref -> :ok)
    end

    stop_ms = System.monotonic_time(:millisecond) - t0

    # The shepherds kill and reap their workers after the pool is gone.
    clean =
      Enum.find(1..100, fn _ ->
        s = sample(cfg, nil)
        if s.marked + s.children > 0, do: Process.sleep(100)
        s.marked + s.children == 0
      end)

    clean_ms = System.monotonic_time(:millisecond) - t0
    for p <- Process.list(), do: :erlang.garbage_collect(p)
    {stop_ms, if(clean, do: clean_ms), sample(cfg, nil)}
  end

  defp report_figures(before, first, last, after_stop, {stop_ms, clean_ms, pool_alive}, problems) do
    IO.puts("\n## Start vs end\n")

    IO.puts(
      "The first row is taken once the pool is ready, the last once it is quiet after the run.\n"
    )

    IO.puts(row(["", "before pool", "first row", "last row", "growth", "after stop"]))
    IO.puts(row(List.duplicate("---", 6)))

    for {label, key, fmt} <- [
          {"open fds", :fds, &"#{&1}"},
          {"threads", :threads, &"#{&1}"},
          {"marked processes", :marked, &"#{&1}"},
          {"descendants", :children, &"#{&1}"},
          {"zombies", :zombies, &"#{&1}"},
          {"erlang memory MB", :memory, &mb/1},
          {"RSS MB", :rss, &mb/1}
        ] do
      growth = last[key] - first[key]
      g = if key in [:memory, :rss], do: mb(growth), else: "#{growth}"

      IO.puts(
        row([label, fmt.(before[key]), fmt.(first[key]), fmt.(last[key]), g, fmt.(after_stop[key])])
      )
    end

    IO.puts(
      if(pool_alive,
        do: "\nThe pool stopped in #{stop_ms} ms; ",
        else: "\nThe pool had stopped during the run; "
      ) <>
        if(clean_ms,
          do: "no marked process or descendant left #{clean_ms} ms after the stop began.",
          else: "processes REMAINED 10 s after the stop."
        )
    )

    after_checks = [
      {after_stop.marked == 0, "no marked process after the stop (#{after_stop.marked})"},
      {after_stop.children == 0 and after_stop.zombies == 0,
       "no descendant or zombie after the stop (#{after_stop.children}, #{after_stop.zombies})"},
      {after_stop.fds == before.fds,
       "fds back to before the pool (#{before.fds} -> #{after_stop.fds})"},
      {after_stop.threads == before.threads,
       "threads back to before the pool (#{before.threads} -> #{after_stop.threads})"}
    ]

    # Only a pool that lived through the run can be compared with its start.
    run_checks = [
      {last.fds == first.fds,
       "fds at the end of the run as at the start (#{first.fds} -> #{last.fds})"},
      {last.threads == first.threads,
       "threads at the end of the run as at the start (#{first.threads} -> #{last.threads})"},
      {last.marked == first.marked and last.children == first.children and last.zombies == 0,
       "processes at the end as at the start (marked #{first.marked} -> #{last.marked}, descendants #{first.children} -> #{last.children}, zombies #{last.zombies})"}
    ]

    IO.puts("")

    for {good, text} <- after_checks ++ if(pool_alive, do: run_checks, else: []) do
      IO.puts("- #{if good, do: "ok", else: "**FAILED**"}: #{text}")
      unless good, do: :ets.insert(problems, {:leak, text})
    end
  end

  defp report_logger(cfg, answers, stats, problems) do
    Logger.flush()
    counts = Map.new(:ets.tab2list(Bench.Soak.LogCounter.table()))
    levels = for {{:level, l}, n} <- Enum.sort(counts), do: "#{l} #{n}"
    errors = for {{:error, _}, text} <- Enum.sort(counts), do: String.slice(text, 0, 400)

    IO.puts(
      "\nLogger events seen by the counting backend: #{Enum.join(levels, ", ")}; flood lines " <>
        "whole: #{counts[:flood_whole] || 0}, broken: #{counts[:flood_broken] || 0}."
    )

    {floods, _} = Map.get(answers, {:flood, :ok}, {0, nil})
    whole = counts[:flood_whole] || 0
    broken = counts[:flood_broken] || 0

    # Lines over a worker's output budget are dropped and counted by the
    # pool (:dropped_output_lines), so each line is either seen or counted.
    # Floods whose worker was killed add some lines of their own.
    dropped = if stats, do: stats.dropped_output_lines, else: 0
    IO.puts("Lines dropped over the workers' output budget (get_stats): #{dropped}.")

    unless whole + dropped >= floods * cfg.flood_lines and broken == 0 do
      :ets.insert(
        problems,
        {:flood,
         "#{floods} floods answered :ok wrote #{floods * cfg.flood_lines} lines; Logger saw " <>
           "#{whole} whole and #{broken} broken ones, and the pool dropped #{dropped}"}
      )
    end

    if errors != [] do
      IO.puts("\nThe first Logger errors:\n")
      for text <- errors, do: IO.puts("    " <> String.replace(text, "\n", "\n    "))
    end
  end

  defp verdict(problems) do
    found = :ets.tab2list(problems)

    if found == [] do
      IO.puts("\n**No problem found.**")
    else
      IO.puts("\n## PROBLEMS\n")
      for {kind, text} <- found, do: IO.puts("- #{kind}: #{text}")
      System.halt(1)
    end
  end

  ## Setup and helpers

  defp config do
    calls = env_int("CALLS", 1_000_000)

    %{
      calls: calls,
      callers: env_int("CALLERS", 32),
      size: env_int("SIZE", 4),
      interval: env_int("INTERVAL", max(div(calls, 20), 1)),
      kill_ms: env_int("KILL_MS", 1000),
      flood_lines: env_int("FLOOD_LINES", 200),
      pipeline: env_int("PIPELINE", 1),
      max_requests:
        if(s = System.get_env("MAX_REQUESTS"), do: String.to_integer(s), else: :infinity),
      seed: if(s = System.get_env("SEED"), do: String.to_integer(s)),
      stall: env_int("STALL", 60),
      console: System.get_env("LOG") == "console",
      issued: :atomics.new(1, []),
      done: :atomics.new(1, []),
      floods: :atomics.new(1, []),
      inflight: :ets.new(:soak_inflight, [:public, :set, write_concurrency: true]),
      t0: System.monotonic_time(:millisecond)
    }
    |> tap(fn _ -> make_payloads() end)
  end

  defp setup_logger(cfg) do
    :ets.new(Bench.Soak.LogCounter.table(), [:public, :named_table, write_concurrency: true])
    {:ok, _} = Logger.add_backend(Bench.Soak.LogCounter)
    unless cfg.console, do: Logger.remove_backend(:console)
  end

  defp header(cfg) do
    IO.puts("# Snakepit soak")

    IO.puts(
      "#{cfg.calls} calls, #{cfg.callers} callers, #{cfg.size} workers, pipeline_depth " <>
        "#{cfg.pipeline}, max_requests #{cfg.max_requests}, a SIGKILL every " <>
        "#{if cfg.kill_ms > 0, do: "#{cfg.kill_ms} ms", else: "(never)"}, floods of " <>
        "#{cfg.flood_lines} lines; #{System.schedulers_online()} schedulers, OTP " <>
        "#{System.otp_release()}, Elixir #{System.version()}, load average before: #{loadavg()}"
    )

    IO.puts(
      "\nMix (per 10 000 calls): " <> Enum.map_join(@kinds, ", ", fn {k, w} -> "#{k} #{w}" end)
    )
  end

  defp merge_counts(results) do
    Enum.reduce(results, %{}, fn r, acc ->
      Map.merge(acc, r.counts, fn _, {a, d}, {b, _} -> {a + b, d} end)
    end)
  end

  defp mb(nil), do: ""
  defp mb(bytes), do: "#{Float.round(bytes / 1_048_576, 1)}"
  defp row(cells), do: "| " <> Enum.join(cells, " | ") <> " |"
  defp env_int(name, default), do: String.to_integer(System.get_env(name, "#{default}"))
  defp loadavg, do: File.read!("/proc/loadavg") |> String.trim()
end

Bench.Soak.run()
