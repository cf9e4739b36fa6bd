defmodule Snakepit.Telemetry do
  @moduledoc """
  The `:telemetry` events Snakepit emits.

  Snakepit does not depend on `:telemetry`: when your application has it
  (`{:telemetry, "~> 1.0"}`, which Phoenix and Ecto bring), Snakepit's events
  reach your handlers; when it does not, emitting costs one
  `:persistent_term` read. Whether `:telemetry` is there is checked when
  Snakepit's application starts (`refresh/0` checks again).

  Durations are in `:native` time units (convert them with
  `System.convert_time_unit/3`), as with every `:telemetry` span.
  Events of a call are emitted in the calling process; those of workers,
  circuits and expired sessions in the pool's process.

  | event | measurements | metadata |
  |-------|--------------|----------|
  | `[:snakepit, :call, :start]` | `system_time`, `monotonic_time` | `pool`, `command`, `session_id`, `correlation_id`, `attempt` |
  | `[:snakepit, :call, :stop]` | `duration`, `queue_time`, `run_time` | `pool`, `command`, `session_id`, `correlation_id`, `attempt`, `worker_os_pid`, `outcome`, `error` |
  | `[:snakepit, :call, :exception]` | `duration` | `pool`, `command`, `session_id`, `correlation_id`, `attempt`, `kind`, `reason`, `stacktrace` |
  | `[:snakepit, :pool, :request]` | `duration`, `queue_time`, `run_time` | as `[:snakepit, :call, :stop]` |
  | `[:snakepit, :pool, :queue_full]` | `queued`, `limit` | `pool`, `command`, `correlation_id` |
  | `[:snakepit, :stream, :start]` | `system_time`, `monotonic_time` | `pool`, `command`, `session_id`, `correlation_id` |
  | `[:snakepit, :stream, :stop]` | `duration`, `chunks` | `pool`, `command`, `session_id`, `correlation_id`, `outcome`, `error` |
  | `[:snakepit, :stream, :exception]` | `duration`, `chunks` | `pool`, `command`, `session_id`, `correlation_id`, `kind`, `reason`, `stacktrace` |
  | `[:snakepit, :session, :created]` | `system_time` | `pool`, `session_id` |
  | `[:snakepit, :session, :cleanup]` | `system_time` | `pool`, `session_id`, `reason` |
  | `[:snakepit, :worker, :start]` | `system_time` | `pool`, `worker_id`, `os_pid` |
  | `[:snakepit, :worker, :exit]` | `system_time` | `pool`, `worker_id`, `os_pid`, `status`, `signal`, `reason` |
  | `[:snakepit, :worker, :recycle]` | `system_time` | `pool`, `worker_id`, `os_pid`, `status`, `signal`, `reason` |
  | `[:snakepit, :pool, :worker_started]` | `system_time` | as `[:snakepit, :worker, :start]` |
  | `[:snakepit, :pool, :worker_stopped]` | `system_time` | as `[:snakepit, :worker, :exit]` or `:recycle` |
  | `[:snakepit, :circuit, :open]` | `system_time`, `failures`, `retry_after_ms` | `pool` |
  | `[:snakepit, :circuit, :half_open]` | `system_time` | `pool` |
  | `[:snakepit, :circuit, :close]` | `system_time` | `pool` |

  What they mean:

  - `:call` events span one attempt of `Snakepit.execute/3` (with the
    `:retry` option, each attempt is a span, `attempt` counting from 1).
    `:stop` is emitted whatever the call returned: `outcome` is `:ok` or the
    error's category, and `error` the `Snakepit.Error` (details redacted) or
    `nil`. `queue_time` (submitted until a worker started it) and
    `run_time` (started until answered) are `nil` when no worker answered.
    `worker_os_pid` is the worker that answered, or `nil`. `:exception` is
    emitted instead of `:stop` when `Snakepit.execute!/3` raises.
    `[:snakepit, :pool, :request]` (the design documents' name) is emitted
    with every `[:snakepit, :call, :stop]`.
  - `:queue_full`: a call was refused because the pool's queue held
    `:max_queue` calls.
  - `:stream` events span a streaming call (`Snakepit.execute_stream/4`,
    `Snakepit.stream/3`): `chunks` is the number taken by the consumer;
    `:exception` is emitted when the consumer's callback raises.
  - `:session` `:created` when a call starts a new session; `:cleanup` when
    a session ends, with `reason` `:ended` (`Snakepit.end_session/2`) or
    `:expired` (`:session_ttl`).
  - `:worker` `:start` when a worker finished its handshake; `:exit` when
    one died or was killed (`status` or `signal`, and `reason` when the pool
    killed it); `:recycle` when one was retired (`reason`: `"max_requests"`,
    `"max_age"` or `"max_memory_mb"`). `[:snakepit, :pool, :worker_started]`
    and `:worker_stopped` (the design documents' names) come with them.
  - `:circuit`: the pool's circuit breaker (`:circuit_breaker` option)
    opened after `failures` failures in a row (calls fail at once for
    `retry_after_ms`), half-opened (one probe call goes through), or closed.

  Metadata never holds call arguments or results; an error's details are
  redacted (see `Snakepit.Redact`).
  """

  @key {__MODULE__, :enabled}

  @typedoc "An event name."
  @type event :: [atom(), ...]

  @doc """
  Whether events are emitted: `:telemetry` is loaded.

      iex> is_boolean(Snakepit.Telemetry.enabled?())
      true
  """
  @spec enabled?() :: boolean()
  def enabled?, do: :persistent_term.get(@key, false)

  @doc """
  Checks again whether `:telemetry` is loaded (done when Snakepit starts).
  """
  @spec refresh() :: boolean()
  def refresh do
    enabled = Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3)
    :persistent_term.put(@key, enabled)
    enabled
  end

  # The design documents' names for events Snakepit emits under its own:
  # each is emitted right after its event, with the same measurements and
  # metadata, from emit/3 and nowhere else.
  @aliases %{
    [:snakepit, :call, :stop] => [:snakepit, :pool, :request],
    [:snakepit, :worker, :start] => [:snakepit, :pool, :worker_started],
    [:snakepit, :worker, :exit] => [:snakepit, :pool, :worker_stopped],
    [:snakepit, :worker, :recycle] => [:snakepit, :pool, :worker_stopped]
  }

  @doc """
  Emits `event`, if `:telemetry` is loaded, and its design-document alias
  when it has one (see the table). Callers that build large metadata check
  `enabled?/0` first.
  """
  @spec emit(event(), map(), map()) :: :ok
  def emit(event, measurements, metadata) do
    if enabled?() do
      # apply/3: no compile-time reference to a module that may be absent.
      apply(:telemetry, :execute, [event, measurements, metadata])

      case @aliases do
        %{^event => alias_event} ->
          apply(:telemetry, :execute, [alias_event, measurements, metadata])

        _ ->
          :ok
      end
    end

    :ok
  end

  @doc "The measurements of a `:start` event, or of a point event."
  @spec start_measurements() :: map()
  def start_measurements,
    do: %{system_time: System.system_time(), monotonic_time: System.monotonic_time()}

  @doc """
  The events of the table above, read from this module's docs (a test
  checks them against what is emitted).
  """
  @spec documented_events() :: [event()]
  def documented_events do
    {:docs_v1, _, _, _, %{"en" => doc}, _, _} = Code.fetch_docs(__MODULE__)

    for line <- String.split(doc, "\n"),
        [_, name] <- [Regex.run(~r/^\| `(\[:snakepit[^`]*\])` \|/, line)] do
      name |> Code.eval_string() |> elem(0)
    end
  end
end
