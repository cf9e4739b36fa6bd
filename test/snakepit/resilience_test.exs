defmodule Snakepit.ResilienceTest do
  # Retries and the circuit breaker, with real workers that fail on purpose.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import Snakepit.TestPools

  alias Snakepit.Error

  defp key, do: "k#{System.unique_integer([:positive])}"

  describe ":retry" do
    test "a retryable error is retried until the call succeeds" do
      pool = start_pool(size: 1)
      opts = [pool: pool, retry: [max_attempts: 3, base_backoff: 1]]
      assert {:ok, 3} = Snakepit.execute("flaky", %{key: key(), failures: 2}, opts)
    end

    test "past max_attempts the last error comes back, with the attempts made" do
      pool = start_pool(size: 1)
      opts = [pool: pool, retry: [max_attempts: 3, base_backoff: 1]]
      assert {:error, %Error{} = e} = Snakepit.execute("flaky", %{key: key(), failures: 9}, opts)
      assert Error.retryable?(e)
      assert e.details.attempts == 3
      assert e.details.code == "flaky"
    end

    test "an error that is not retryable is not retried, unless its category is listed" do
      pool = start_pool(size: 1)
      k = key()
      args = %{key: k, failures: 1, retryable: false}
      opts = [pool: pool, retry: [max_attempts: 3, base_backoff: 1]]
      assert {:error, %Error{category: :python_error} = e} = Snakepit.execute("flaky", args, opts)
      assert e.details.attempts == 1
      retry = [max_attempts: 3, base_backoff: 1, categories: [:python_error]]

      assert {:ok, 3} =
               Snakepit.execute("flaky", %{args | failures: 2, key: key()}, pool: pool, retry: retry)
    end

    test "the total time never exceeds :timeout" do
      pool = start_pool(size: 1)

      opts = [
        pool: pool,
        timeout: 300,
        retry: [max_attempts: 1_000, base_backoff: 50, max_backoff: 100]
      ]

      started = System.monotonic_time(:millisecond)

      assert {:error, %Error{} = e} =
               Snakepit.execute("flaky", %{key: key(), failures: 1_000_000}, opts)

      elapsed = System.monotonic_time(:millisecond) - started
      assert elapsed < 1_000, "took #{elapsed} ms"
      assert e.details.attempts > 1
    end

    test "the pool's :retry is the default; a call can turn it off" do
      pool = start_pool(size: 1, retry: [max_attempts: 3, base_backoff: 1])
      assert {:ok, 2} = Snakepit.execute("flaky", %{key: key(), failures: 1}, pool: pool)

      assert {:error, %Error{details: %{code: "flaky"}}} =
               Snakepit.execute("flaky", %{key: key(), failures: 1}, pool: pool, retry: false)
    end

    test "a bad :retry is refused before anything runs" do
      pool = start_pool(size: 1)

      for bad <- [:yes, [timeout: 5], [max_attempts: 0]] do
        assert {:error, %Error{category: :validation}} =
                 Snakepit.execute("ping", %{}, pool: pool, retry: bad)
      end

      assert Snakepit.get_stats(pool).requests == 0
    end
  end

  describe ":circuit_breaker" do
    test "opens after repeated worker deaths, fails fast while open, and a probe closes it" do
      pool = start_pool(size: 2, circuit_breaker: [threshold: 3, window: 10_000, cooldown: 300])

      for _ <- 1..3 do
        assert {:error, %Error{category: :worker}} = Snakepit.execute("exit_now", %{}, pool: pool)
      end

      assert {:error, %Error{category: :pool} = e} = Snakepit.execute("ping", %{}, pool: pool)
      assert e.details.circuit == :open
      assert e.details.retry_after_ms in 1..300
      assert Error.retryable?(e)
      assert Snakepit.get_stats(pool).circuit == :open

      wait_until(fn -> match?({:ok, "pong"}, Snakepit.execute("ping", %{}, pool: pool)) end)
      assert Snakepit.get_stats(pool).circuit == :closed
    end

    test "a failed probe opens it again; Python errors never open it" do
      pool = start_pool(size: 2, circuit_breaker: [threshold: 2, cooldown: 200])

      for _ <- 1..10 do
        assert {:error, %Error{category: :python_error}} =
                 Snakepit.execute("boom", %{message: "x"}, pool: pool)
      end

      assert Snakepit.get_stats(pool).circuit == :closed
      {:error, _} = Snakepit.execute("exit_now", %{}, pool: pool)
      {:error, _} = Snakepit.execute("exit_now", %{}, pool: pool)
      assert Snakepit.get_stats(pool).circuit == :open
      :ok = Snakepit.await_ready(pool, 10_000)

      # The first call after the cooldown is the probe; it dies too.
      wait_until(fn ->
        match?({:error, %Error{category: :worker}}, Snakepit.execute("exit_now", %{}, pool: pool))
      end)

      assert Snakepit.get_stats(pool).circuit == :open
    end

    test "off by default" do
      pool = start_pool(size: 1)
      assert Snakepit.get_stats(pool).circuit == nil
    end
  end

  test "get_stats has latency percentiles, read natively" do
    pool = start_pool(size: 1)
    for _ <- 1..20, do: {:ok, _} = Snakepit.execute("sleep", %{ms: 2}, pool: pool)
    %{latency: %{queue: q, run: r, samples: 20}} = Snakepit.get_stats(pool)
    assert r.p50 >= 2_000 and r.p50 <= r.p95 and r.p95 <= r.p99
    assert is_integer(q.p50) and q.p50 < r.p50
  end
end
