defmodule Mix.Tasks.Snakepit.Status do
  @shortdoc "Shows Snakepit's pools: workers, queue, outcomes, latency"

  @moduledoc """
  Shows each pool's workers, queue, call outcomes and latency: on a running
  node, or for the locally configured pools started for the occasion.

      mix snakepit.status --node my_app@host --cookie SECRET
      mix snakepit.status --node my_app@host --pool ml
      mix snakepit.status

  ## Sources

  With `--node`, the mix process becomes a distributed node (a random
  name, short or long like the target's) and connects to `NAME` with
  `--cookie` (default: `~/.erlang.cookie`). It lists the pools running
  there and reads `Snakepit.get_stats/1` and `Snakepit.list_workers/1`
  over `:rpc`. Nothing on the node is changed. The node must be reachable
  by Erlang distribution (`epmd -names` lists a host's nodes); a release
  started with `--sname`/`--name` or `RELEASE_DISTRIBUTION` is.

  Without `--node`, the pools of `config :snakepit` (or, with none, a pool
  of the bundled demo adapter) are started here, in full, without starting
  the application; once all their workers are ready their status is
  printed and they are stopped. That shows what the pools cost at rest:
  the memory of each worker once its adapter is loaded, and how long they
  take to start.

  ## Options

    * `--node NAME` - the node to inspect (`name@host`; `name` alone means
      this host)
    * `--cookie COOKIE` - its cookie
    * `--pool NAME` - only this pool (repeatable)

  ## Output

  Per pool: a row per worker (OS pid, state, calls in flight, requests
  served, age, resident memory, sessions bound to it), the gauges (workers
  by state, queued calls), every request's outcome as counted by
  `Snakepit.get_stats/1` (completed, Python errors, timeouts...), the
  restarts, recycles and sessions, and the queue and run latency
  percentiles when the pool measures them (`-` when it does not).

      $ mix snakepit.status --node demo@myhost --cookie secret
      Node demo@myhost: 1 pool

      pool :default: 2 workers (2 idle, 0 busy, 0 starting, 0 stopping), 0 queued, 0 in flight
        worker  os pid  state  running  in flight  requests  age      rss       sessions
             1  104931  idle         0          0       513  12m 04s  24.1 MiB         1
             2  104939  idle         0          0       498  12m 04s  23.9 MiB         0
        requests 1011: completed 1003, python errors 5, validation errors 1, worker errors 0,
          transport errors 0, timeouts 2, queue timeouts 0, cancelled 0, rejected 0, stopped 0
        restarts 0, recycles 0, requeued 0, sessions 1 (expired 0, lost 0), chunks 40,
          dropped output lines 0
        latency  p50    p95     p99
          queue  3 µs   11 µs   40 µs
          run    52 µs  180 µs  1.2 ms

  Latency is shown when `Snakepit.get_stats/1` has a `:latency` map
  (`%{queue: %{p50: _, p95: _, p99: _}, run: %{...}}`, in microseconds),
  and as `-` otherwise.

  To list a node's pools it calls `Snakepit.Pool.names/0` there if that
  exists, and otherwise reads the names registered in `Snakepit.Registry`
  that have a running pool (`Snakepit.Pool.lookup/1`).
  """

  use Mix.Task

  alias Snakepit.Doctor

  @switches [node: :string, cookie: :string, pool: :keep]
  @rpc_timeout 15_000

  @outcomes [
    completed: "completed",
    python_errors: "python errors",
    validation_errors: "validation errors",
    worker_errors: "worker errors",
    transport_errors: "transport errors",
    timeouts: "timeouts",
    queue_timeouts: "queue timeouts",
    cancelled: "cancelled",
    rejected: "rejected",
    stopped: "stopped"
  ]

  @others [
    restarts: "restarts",
    recycles: "recycles",
    requeued: "requeued"
  ]

  @impl Mix.Task
  def run(args) do
    {opts, rest} = OptionParser.parse!(args, strict: @switches)
    if rest != [], do: Mix.raise("snakepit.status takes no arguments, got: #{Enum.join(rest, " ")}")
    only = for {:pool, name} <- opts, do: name

    case opts[:node] do
      nil ->
        if opts[:cookie], do: Mix.raise("--cookie needs --node")
        Mix.Task.run("app.config", [])
        local(only)

      node ->
        remote(node, opts[:cookie], only)
    end
  end

  ## Local: the configured pools, started here

  defp local(only) do
    {pools, checks, source} = Doctor.pools_to_check()

    case Enum.find(checks, &(&1.status == :error)) do
      nil -> :ok
      check -> Mix.raise("config :snakepit is refused: " <> check.detail)
    end

    if source == :demo,
      do:
        info(
          "No pools in config :snakepit: starting a pool of the bundled demo adapter " <>
            "#{Doctor.demo_adapter()} instead."
        )

    pools = select(pools, only, Enum.map(pools, &elem(&1, 0)))
    stop = Doctor.start_support()

    try do
      Enum.each(pools, fn {name, opts} ->
        info("")
        started = System.monotonic_time(:millisecond)

        result =
          Doctor.with_pool(opts, fn throwaway ->
            with :ok <- Snakepit.await_ready(throwaway, Keyword.get(opts, :startup_timeout, 60_000)) do
              ready_ms = System.monotonic_time(:millisecond) - started
              {:ok, ready_ms, collect(throwaway, &apply/3)}
            end
          end)

        case result do
          {:ok, ready_ms, status} ->
            info(format_pool(%{status | name: name}))
            info("  (started here for this report, all workers ready in #{ready_ms} ms; stopped)")

          {:error, error} ->
            Mix.raise("pool #{inspect(name)} did not start: #{error.message}")
        end
      end)
    after
      stop.()
    end

    :ok
  end

  defp select(pools, [], _names), do: pools

  defp select(pools, only, names) do
    wanted = Enum.map(only, &String.trim_leading(&1, ":"))
    missing = wanted -- Enum.map(names, &Atom.to_string/1)

    if missing != [],
      do:
        Mix.raise(
          "no pool named #{Enum.join(missing, ", ")}; pools: #{Enum.map_join(names, ", ", &inspect/1)}"
        )

    Enum.filter(pools, fn {name, _} -> Atom.to_string(name) in wanted end)
  end

  ## Remote: a running node

  defp remote(node, cookie, only) do
    target = node_name(node)
    start_distribution(target)
    if cookie, do: true = Node.set_cookie(target, String.to_atom(cookie))

    unless Node.connect(target) == true, do: Mix.raise(connect_error(target, cookie))

    call = fn m, f, a -> :rpc.call(target, m, f, a, @rpc_timeout) end

    names =
      case remote_pools(call) do
        {:ok, names} -> names
        {:error, message} -> Mix.raise("#{target}: #{message}")
      end

    names =
      names
      |> Enum.map(&{&1, []})
      |> select(only, names)
      |> Enum.map(&elem(&1, 0))

    info("Node #{target}: #{length(names)} #{if length(names) == 1, do: "pool", else: "pools"}")

    for name <- names do
      info("")
      info(format_pool(collect(name, call)))
    end

    :ok
  end

  defp node_name(node) do
    if String.contains?(node, "@") do
      String.to_atom(node)
    else
      # As `--sname` names a node: this host's name up to its first dot.
      {:ok, host} = :inet.gethostname()
      String.to_atom("#{node}@#{host |> to_string() |> String.split(".") |> hd()}")
    end
  end

  defp start_distribution(target) do
    unless Node.alive?() do
      [_, host] = target |> Atom.to_string() |> String.split("@", parts: 2)
      mode = if String.contains?(host, "."), do: :longnames, else: :shortnames
      name = :"snakepit_status_#{System.unique_integer([:positive])}_#{:os.getpid()}"

      case Node.start(name, mode) do
        {:ok, _} ->
          :ok

        {:error, reason} ->
          reason =
            case reason do
              {{:shutdown, {:failed_to_start_child, :net_kernel, why}}, _} -> why
              other -> other
            end

          Mix.raise(
            "could not make this mix process a distributed node (#{mode}) to reach " <>
              "#{target}: #{inspect(reason)}. epmd must be running (it is whenever a node " <>
              "runs on this host; else `epmd -daemon`)" <>
              if(mode == :longnames,
                do: ", and long names need this host to have a fully qualified name",
                else: ""
              )
          )
      end
    end
  end

  # Why Node.connect/1 failed, as far as epmd can tell: no such node, or
  # one that refused us (a wrong cookie).
  defp connect_error(target, cookie) do
    [name, host] = target |> Atom.to_string() |> String.split("@", parts: 2)
    own = node() |> Atom.to_string() |> String.split("@") |> hd()

    case :net_adm.names(String.to_charlist(host)) do
      {:ok, names} ->
        names = for {n, _port} <- names, to_string(n) != own, do: to_string(n)

        if name in names do
          "could not connect to #{target}: it is running but refused the connection. " <>
            if(cookie,
              do: "Is --cookie its cookie? ",
              else: "Give its cookie with --cookie. "
            ) <>
            "A release's cookie is in its releases/COOKIE file (or RELEASE_COOKIE)."
        else
          "could not connect to #{target}: no node named #{name} on #{host} " <>
            "(epmd there knows: #{if names == [], do: "none", else: Enum.join(names, ", ")}). " <>
            "Start it with --sname/--name, or check the name."
        end

      {:error, reason} ->
        "could not connect to #{target}: epmd on #{host} cannot be reached " <>
          "(#{inspect(reason)}): is the node running, started with --sname/--name?"
    end
  end

  @doc """
  The names of the pools running where `call` (apply/3, or :rpc.call/4
  to a node) runs: Snakepit.Pool.names/0 if that node's Snakepit has it,
  else the pools registered in Snakepit.Registry that have a native
  handle published (Snakepit.Pool.lookup/1).
  """
  @spec remote_pools((module(), atom(), list() -> term())) :: {:ok, [atom()]} | {:error, String.t()}
  def remote_pools(call) do
    case call.(Snakepit.Pool, :names, []) do
      names when is_list(names) ->
        {:ok, Enum.sort(names)}

      _undef_or_badrpc ->
        case call.(Registry, :select, [Snakepit.Registry, [{{:"$1", :_, :_}, [], [:"$1"]}]]) do
          names when is_list(names) ->
            {:ok,
             names |> Enum.filter(&(call.(Snakepit.Pool, :lookup, [&1]) != nil)) |> Enum.sort()}

          {:badrpc, {:EXIT, {%ArgumentError{}, _}}} ->
            {:error, "Snakepit is not running there (no Snakepit.Registry)"}

          {:badrpc, reason} ->
            {:error, "cannot list its pools: #{inspect(reason)}"}
        end
    end
  end

  ## Collecting and formatting

  @doc """
  A pool's stats and workers, read with `call` (apply/3, or an :rpc.call).
  """
  @spec collect(atom(), (module(), atom(), list() -> term())) :: map()
  def collect(name, call) do
    stats = call.(Snakepit, :get_stats, [name])
    workers = call.(Snakepit, :list_workers, [name])

    case {stats, workers} do
      {%{} = stats, workers} when is_list(workers) ->
        %{name: name, stats: stats, workers: workers, error: nil}

      {other, _} when not is_map(other) ->
        %{name: name, stats: nil, workers: [], error: describe_error(other)}

      {_, other} ->
        %{name: name, stats: nil, workers: [], error: describe_error(other)}
    end
  end

  defp describe_error({:error, %{message: message}}), do: message
  defp describe_error({:badrpc, reason}), do: "rpc failed: #{inspect(reason)}"
  defp describe_error(other), do: inspect(other)

  @doc """
  The report of one pool (what `collect/2` returned), as text.
  """
  @spec format_pool(map()) :: String.t()
  def format_pool(%{name: name, error: error}) when is_binary(error) do
    "pool #{inspect(name)}: #{error}"
  end

  def format_pool(%{name: name, stats: stats, workers: workers}) do
    header =
      "pool #{inspect(name)}: #{count(stats, :workers, "worker")} " <>
        "(#{get(stats, :idle)} idle, #{get(stats, :busy)} busy, #{get(stats, :starting)} starting, " <>
        "#{get(stats, :stopping)} stopping), #{get(stats, :queued)} queued, " <>
        "#{get(stats, :in_flight)} in flight"

    rows =
      for w <- workers do
        [
          w[:worker_id],
          w[:os_pid],
          w[:state],
          Map.get(w, :running, "-"),
          w[:in_flight],
          w[:requests],
          age(w[:age_ms]),
          bytes(w[:rss_bytes]),
          w[:sessions]
        ]
      end

    workers_table =
      if rows == [],
        do: ["  no workers"],
        else:
          table(
            [
              "worker",
              "os pid",
              "state",
              "running",
              "in flight",
              "requests",
              "age",
              "rss",
              "sessions"
            ],
            rows,
            [:right, :right, :left, :right, :right, :right, :left, :left, :right]
          )

    [first_outcome | outcomes] =
      Enum.map(@outcomes, fn {key, label} -> "#{label} #{get(stats, key)}" end)

    outcomes = ["requests #{get(stats, :requests)}: #{first_outcome}" | outcomes]

    others =
      Enum.map(@others, fn {key, label} -> "#{label} #{get(stats, key)}" end) ++
        [
          "sessions #{get(stats, :sessions)} (expired #{get(stats, :sessions_expired)}, " <>
            "lost #{get(stats, :sessions_lost)})",
          "chunks #{get(stats, :chunks)}",
          "dropped output lines #{get(stats, :dropped_output_lines)}"
        ]

    latency = Map.get(stats, :latency) || %{}

    latency_table =
      table(
        ["latency", "p50", "p95", "p99"],
        for kind <- [:queue, :run] do
          percentiles = Map.get(latency, kind) || %{}
          ["  #{kind}" | Enum.map([:p50, :p95, :p99], &micros(Map.get(percentiles, &1)))]
        end,
        [:left, :left, :left, :left]
      )

    Enum.join(
      [header | workers_table] ++
        wrap(outcomes, "  ") ++ wrap(others, "  ") ++ latency_table,
      "\n"
    )
  end

  defp get(stats, key) do
    case Map.get(stats, key) do
      nil -> "-"
      value -> value
    end
  end

  defp count(stats, key, word) do
    case Map.get(stats, key) do
      1 -> "1 #{word}"
      n -> "#{n || "-"} #{word}s"
    end
  end

  # Rows under a header, columns padded, each line indented by two spaces.
  defp table(header, rows, aligns) do
    cells = Enum.map([header | rows], fn row -> Enum.map(row, &cell/1) end)

    widths =
      cells
      |> Enum.zip()
      |> Enum.map(fn column ->
        column |> Tuple.to_list() |> Enum.map(&String.length/1) |> Enum.max()
      end)

    [head | body] =
      Enum.map(cells, fn row ->
        Enum.zip([row, widths, aligns])
        |> Enum.map_join("  ", fn
          {text, width, :right} -> String.pad_leading(text, width)
          {text, width, :left} -> String.pad_trailing(text, width)
        end)
      end)

    Enum.map([head | body], &("  " <> String.trim_trailing(&1)))
  end

  defp cell(nil), do: "-"
  defp cell(value) when is_atom(value), do: Atom.to_string(value)
  defp cell(value) when is_binary(value), do: value
  defp cell(value), do: to_string(value)

  # Items joined by ", " in lines of at most 100 characters, continuation
  # lines indented twice.
  defp wrap(items, indent) do
    items
    |> Enum.reduce([], fn
      item, [] ->
        [indent <> item]

      item, [line | done] ->
        if String.length(line) + 2 + String.length(item) > 100,
          do: [indent <> "  " <> item, line <> "," | done],
          else: [line <> ", " <> item | done]
    end)
    |> Enum.reverse()
  end

  @doc """
  Milliseconds as "850 ms", "12s", "3m 04s", "2h 05m", "3d 04h".
  """
  @spec age(non_neg_integer() | nil) :: String.t()
  def age(nil), do: "-"
  def age(ms) when ms < 1_000, do: "#{ms} ms"
  def age(ms) when ms < 60_000, do: "#{div(ms, 1_000)}s"

  def age(ms) when ms < 3_600_000,
    do: "#{div(ms, 60_000)}m #{pad2(div(rem(ms, 60_000), 1_000))}s"

  def age(ms) when ms < 86_400_000,
    do: "#{div(ms, 3_600_000)}h #{pad2(div(rem(ms, 3_600_000), 60_000))}m"

  def age(ms), do: "#{div(ms, 86_400_000)}d #{pad2(div(rem(ms, 86_400_000), 3_600_000))}h"

  defp pad2(n), do: n |> Integer.to_string() |> String.pad_leading(2, "0")

  @doc """
  Bytes as "812 B", "4.0 KiB", "24.1 MiB", "1.20 GiB".
  """
  @spec bytes(non_neg_integer() | nil) :: String.t()
  def bytes(nil), do: "-"
  def bytes(b) when b < 1024, do: "#{b} B"
  def bytes(b) when b < 1024 * 1024, do: "#{:erlang.float_to_binary(b / 1024, decimals: 1)} KiB"

  def bytes(b) when b < 1024 * 1024 * 1024,
    do: "#{:erlang.float_to_binary(b / 1024 / 1024, decimals: 1)} MiB"

  def bytes(b), do: "#{:erlang.float_to_binary(b / 1024 / 1024 / 1024, decimals: 2)} GiB"

  @doc """
  Microseconds as "850 µs", "1.2 ms", "3.40 s"; "-" when not measured.
  """
  @spec micros(number() | nil) :: String.t()
  def micros(us) when is_number(us) and us < 1_000, do: "#{round(us)} µs"

  def micros(us) when is_number(us) and us < 1_000_000,
    do: "#{:erlang.float_to_binary(us / 1_000, decimals: 1)} ms"

  def micros(us) when is_number(us), do: "#{:erlang.float_to_binary(us / 1_000_000, decimals: 2)} s"
  def micros(_), do: "-"

  defp info(message), do: Mix.shell().info(message)
end
