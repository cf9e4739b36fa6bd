defmodule Snakepit.Retry do
  @moduledoc """
  Runs a call again when it fails in a way that may pass, with exponential
  backoff and full jitter, within one time budget.

      Snakepit.Retry.run(
        fn budget -> Snakepit.execute("lookup", %{id: 7}, timeout: budget) end,
        max_attempts: 5,
        timeout: 10_000
      )

  `fun` receives the time left, in ms (or `:infinity`), and returns
  `{:ok, result}` or `{:error, %Snakepit.Error{}}`. An error is retried
  when `Snakepit.Error.retryable?/1` says so (the call never started, or the
  Python tool raised a `ToolError` with `retryable=True`), or when its
  category is in `:categories`: list categories only for tools that are
  safe to run twice, as a retried `:timeout` or `:worker` error may have
  run the call already. Any other answer of `fun` is returned as it is.

  Before attempt `n + 1`, `run/2` sleeps a random time from 0 to
  `min(max_backoff, base_backoff * 2^(n - 1))` ms ("full jitter", so that
  callers that failed together do not retry together). It never sleeps
  past the deadline: when the sleep would use up the time left, or none is
  left, it returns the last error. The last attempt gets what remains of
  the budget, so `run/2` takes about `:timeout` at most (plus what `fun`
  takes beyond the budget it was given).

  The error returned after one or more attempts has `details.attempts`, the
  number of times `fun` ran.

  ## Options

  | option          | default     | meaning                                                    |
  |-----------------|-------------|------------------------------------------------------------|
  | `:max_attempts` | `3`         | attempts in all, the first included (an integer ≥ 1)       |
  | `:base_backoff` | `50`        | ms; the cap of the first sleep, doubled after each attempt |
  | `:max_backoff`  | `2_000`     | ms; the most a sleep's cap grows to                        |
  | `:categories`   | `[]`        | error categories retried even when not `retryable?/1`      |
  | `:timeout`      | `:infinity` | ms (or `:infinity`) for all attempts and sleeps together   |

  Backoffs are integers ≥ 0 and the timeout is at most
  `Snakepit.Config.max_timeout/0`. Options that do not fit are refused,
  before `fun` runs, with a `:validation` error.

      iex> Snakepit.Retry.run(fn _budget -> {:ok, 1} end)
      {:ok, 1}
      iex> busy = Snakepit.Error.pool("the queue is full", %{retryable: true})
      iex> {:error, error} = Snakepit.Retry.run(fn _ -> {:error, busy} end, base_backoff: 0)
      iex> error.details.attempts
      3
      iex> {:error, error} = Snakepit.Retry.run(fn _ -> {:ok, 1} end, max_attempts: 0)
      iex> error.category
      :validation
  """

  alias Snakepit.Error

  @defaults [
    max_attempts: 3,
    base_backoff: 50,
    max_backoff: 2_000,
    categories: [],
    timeout: :infinity
  ]
  @categories [:worker, :timeout, :python_error, :validation, :pool, :transport]

  @typedoc "An option of `run/2`; see the table above."
  @type option ::
          {:max_attempts, pos_integer()}
          | {:base_backoff, non_neg_integer()}
          | {:max_backoff, non_neg_integer()}
          | {:categories, [Error.category()]}
          | {:timeout, timeout()}

  @typedoc "What `fun` returns."
  @type result :: {:ok, term()} | {:error, Error.t()}

  @doc """
  Calls `fun` with the time left until it succeeds, fails in a way that is
  not retried, or attempts or time run out. See the module docs.
  """
  @spec run((timeout() -> result()), [option()]) :: result()
  def run(fun, opts \\ []) do
    with :ok <- check_fun(fun),
         {:ok, o} <- options(opts) do
      deadline = if o.timeout == :infinity, do: :infinity, else: now() + o.timeout

      attempt(fun, o, 1, deadline)
    end
  end

  defp attempt(fun, o, n, deadline) do
    case fun.(time_left(deadline)) do
      {:error, %Error{} = error} ->
        if n < o.max_attempts and retry?(error, o) and wait(o, n, deadline),
          do: attempt(fun, o, n + 1, deadline),
          else: {:error, with_attempts(error, n)}

      other ->
        other
    end
  end

  # Sleeps before attempt n + 1 if the sleep ends before the deadline; true
  # if time is left then (a sleep can last a little longer than asked).
  defp wait(o, n, deadline) do
    sleep = backoff(o, n)

    if fits?(sleep, deadline) do
      Process.sleep(sleep)
      time_left(deadline) != 0
    else
      false
    end
  end

  defp retry?(error, o), do: Error.retryable?(error) or error.category in o.categories

  # Full jitter: uniform from 0 to the exponential cap.
  defp backoff(o, n) do
    cap = if n > 32, do: o.max_backoff, else: min(o.max_backoff, o.base_backoff * 2 ** (n - 1))
    :rand.uniform(cap + 1) - 1
  end

  # Some time must be left after the sleep, for the next attempt.
  defp fits?(_sleep, :infinity), do: true
  defp fits?(sleep, deadline), do: now() + sleep < deadline

  defp time_left(:infinity), do: :infinity
  defp time_left(deadline), do: max(deadline - now(), 0)

  defp now, do: System.monotonic_time(:millisecond)

  defp with_attempts(%Error{details: details} = error, n) when is_map(details),
    do: %{error | details: Map.put(details, :attempts, n)}

  defp with_attempts(error, _n), do: error

  defp check_fun(fun) when is_function(fun, 1), do: :ok

  defp check_fun(fun) do
    {:error,
     Error.validation(
       "Snakepit.Retry.run/2 needs a function of one argument (the time left), got: " <>
         Error.excerpt(fun)
     )}
  end

  defp options(opts) do
    if Keyword.keyword?(opts) do
      case Keyword.keys(opts) -- Keyword.keys(@defaults) do
        [] ->
          o = Map.new(Keyword.merge(@defaults, opts))
          Enum.reduce_while(@defaults, {:ok, o}, fn {key, _}, ok -> check(key, o[key], ok) end)

        unknown ->
          invalid(
            "unknown retry #{if length(unknown) == 1, do: "option", else: "options"} " <>
              Enum.map_join(unknown, ", ", &inspect/1) <>
              " (known: #{Enum.map_join(Keyword.keys(@defaults), ", ", &inspect/1)})",
            %{unknown_keys: unknown}
          )
      end
    else
      invalid("retry options must be a keyword list, got: #{Error.excerpt(opts)}", %{})
    end
  end

  defp check(:max_attempts, n, ok) when is_integer(n) and n >= 1, do: {:cont, ok}
  defp check(:max_attempts, n, _), do: halt(:max_attempts, "an integer ≥ 1", n)

  defp check(key, ms, ok) when key in [:base_backoff, :max_backoff] and is_integer(ms) and ms >= 0,
    do: {:cont, ok}

  defp check(key, ms, _) when key in [:base_backoff, :max_backoff],
    do: halt(key, "an integer ≥ 0 (ms)", ms)

  defp check(:timeout, :infinity, ok), do: {:cont, ok}

  defp check(:timeout, ms, ok) when is_integer(ms) and ms >= 0 do
    if ms <= Snakepit.Config.max_timeout(),
      do: {:cont, ok},
      else: halt(:timeout, "at most #{Snakepit.Config.max_timeout()} ms, or :infinity", ms)
  end

  defp check(:timeout, ms, _), do: halt(:timeout, "an integer ≥ 0 (ms) or :infinity", ms)

  defp check(:categories, list, ok) do
    if categories?(list),
      do: {:cont, ok},
      else:
        halt(
          :categories,
          "a list of error categories (#{Enum.map_join(@categories, ", ", &inspect/1)})",
          list
        )
  end

  defp categories?([]), do: true
  defp categories?([category | rest]), do: category in @categories and categories?(rest)
  defp categories?(_other), do: false

  defp halt(key, expected, got) do
    {:halt,
     invalid("the retry option #{inspect(key)} must be #{expected}, got: #{Error.excerpt(got)}", %{
       option: key
     })}
  end

  defp invalid(message, details), do: {:error, Error.validation(message, details)}
end
