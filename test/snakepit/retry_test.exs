defmodule Snakepit.RetryTest do
  # Snakepit.Retry with fake calls: funs that count their attempts and
  # answer from a script. Backoffs are kept small (or 0); the deadline tests
  # use funs that spend their budget, so they do not depend on the jitter.
  use ExUnit.Case, async: true

  alias Snakepit.Error
  alias Snakepit.Retry

  doctest Snakepit.Retry

  @busy Error.pool("the queue is full", %{retryable: true})
  @boom Error.python_error("ValueError", "boom", nil)
  @late Error.timeout("no answer within 10 ms", %{timeout: 10})

  # A fun that answers with `answers` in turn (the last one ever after),
  # and sends the test each budget it receives.
  defp script(answers) do
    test = self()
    {:ok, agent} = Agent.start_link(fn -> answers end)

    fn budget ->
      send(test, {:budget, budget})

      Agent.get_and_update(agent, fn
        [last] -> {last, [last]}
        [next | rest] -> {next, rest}
      end)
    end
  end

  defp budgets do
    receive do
      {:budget, budget} -> [budget | budgets()]
    after
      0 -> []
    end
  end

  defp elapsed_ms(fun) do
    start = System.monotonic_time(:millisecond)
    result = fun.()
    {result, System.monotonic_time(:millisecond) - start}
  end

  describe "what is retried" do
    test "a success is returned at once" do
      assert Retry.run(script([{:ok, 1}])) == {:ok, 1}
      assert budgets() == [:infinity]
    end

    test "a retryable error is retried until a success" do
      assert Retry.run(script([{:error, @busy}, {:error, @busy}, {:ok, :done}]), base_backoff: 1) ==
               {:ok, :done}

      assert length(budgets()) == 3
    end

    test "a retryable error that persists: max_attempts calls, the last error with attempts" do
      assert {:error, error} =
               Retry.run(script([{:error, @busy}]), base_backoff: 0, max_attempts: 5)

      assert error.details == %{retryable: true, attempts: 5}
      assert error.category == :pool
      assert length(budgets()) == 5
    end

    test "max_attempts: 1 never retries" do
      assert {:error, %Error{details: %{attempts: 1}}} =
               Retry.run(script([{:error, @busy}]), max_attempts: 1)

      assert length(budgets()) == 1
    end

    test "an error that is not retryable is returned after one attempt, with attempts: 1" do
      for error <- [@boom, @late, Error.worker("died", %{retryable: false})] do
        assert {:error, returned} = Retry.run(script([{:error, error}, {:ok, 1}]), base_backoff: 0)
        assert returned == %{error | details: Map.put(error.details, :attempts, 1)}
      end

      assert length(budgets()) == 3
    end

    test ":categories retries those categories even when not retryable" do
      assert Retry.run(script([{:error, @late}, {:ok, 1}]), categories: [:timeout], base_backoff: 0) ==
               {:ok, 1}

      assert {:error, %Error{category: :python_error, details: %{attempts: 1}}} =
               Retry.run(script([{:error, @boom}, {:ok, 1}]),
                 categories: [:timeout],
                 base_backoff: 0
               )

      assert {:error, %Error{details: %{attempts: 2}}} =
               Retry.run(script([{:error, @boom}]),
                 categories: [:timeout, :python_error],
                 base_backoff: 0,
                 max_attempts: 2
               )
    end

    test "a ToolError marked retryable is retried" do
      retryable =
        Error.from_python(%{
          "kind" => "exception",
          "type" => "ToolError",
          "message" => "m",
          "retryable" => true
        })

      assert Retry.run(script([{:error, retryable}, {:ok, 1}]), base_backoff: 0) == {:ok, 1}
    end

    test "any other answer is returned as it is, not retried" do
      for other <- [:ok, {:error, :closed}, {:ok, 1, 2}, nil] do
        assert Retry.run(script([other, {:ok, 1}])) == other
      end
    end

    test "an error whose details are not a map is returned without attempts" do
      odd = %Error{category: :worker, details: nil}
      assert Retry.run(script([{:error, odd}])) == {:error, odd}
    end
  end

  describe "time" do
    test "with a timeout, each attempt gets what is left of it" do
      fun = fn budget ->
        send(self(), {:budget, budget})
        Process.sleep(20)
        {:error, @busy}
      end

      assert {:error, _} = Retry.run(fun, timeout: 1_000, base_backoff: 0, max_attempts: 3)
      assert [first, second, third] = budgets()
      # Each attempt slept 20 ms: at least that much less is left for the
      # next. (No lower bound: a starved test process may wake late.)
      assert first == 1_000
      assert second <= 980 and second > 0
      assert third <= second - 20 and third > 0
    end

    test "the total never exceeds the timeout: it stops when no time is left" do
      # Fails at once, always retryable: only the deadline stops it. The
      # budget is 50 backoffs' worth, so that even a test process starved
      # by a loaded machine retries more than twice (200 ms once got only 2).
      {result, elapsed} =
        elapsed_ms(fn ->
          Retry.run(script([{:error, @busy}]),
            timeout: 1_000,
            base_backoff: 10,
            max_backoff: 20,
            max_attempts: 10_000
          )
        end)

      assert {:error, %Error{details: %{attempts: attempts}}} = result
      budgets = budgets()
      assert attempts == length(budgets) and attempts > 2
      assert elapsed <= 1_000 + 100
      assert Enum.all?(budgets, &(is_integer(&1) and &1 > 0 and &1 <= 1_000))
      assert budgets == Enum.sort(budgets, :desc)
    end

    test "a call that spends its budget leaves no time: no sleep, no retry" do
      fun = fn budget ->
        send(self(), {:budget, budget})
        Process.sleep(budget)
        {:error, @busy}
      end

      {result, elapsed} = elapsed_ms(fn -> Retry.run(fun, timeout: 50, base_backoff: 0) end)
      assert {:error, %Error{details: %{attempts: 1}}} = result
      assert budgets() == [50]
      assert elapsed < 50 + 100
    end

    test "a backoff that would pass the deadline is not slept: the last error is returned" do
      # The backoff cap is huge: a sleep that fits in 100 ms is unlikely
      # (100 in 10^9), and one that does not is never slept.
      {result, elapsed} =
        elapsed_ms(fn ->
          Retry.run(script([{:error, @busy}]),
            timeout: 100,
            base_backoff: 1_000_000_000,
            max_backoff: 1_000_000_000
          )
        end)

      assert {:error, %Error{details: %{attempts: 1}}} = result
      assert elapsed < 100
    end

    test "timeout: 0 makes one attempt, with a budget of 0" do
      assert {:error, %Error{details: %{attempts: 1}}} =
               Retry.run(script([{:error, @busy}]), timeout: 0, base_backoff: 0)

      assert budgets() == [0]
    end

    test "sleeps grow from base_backoff to max_backoff at most" do
      # Sleeps of at most 5 + 10 + 10 ms before attempts 2 to 4.
      {result, elapsed} =
        elapsed_ms(fn ->
          Retry.run(script([{:error, @busy}]), base_backoff: 5, max_backoff: 10, max_attempts: 4)
        end)

      assert {:error, %Error{details: %{attempts: 4}}} = result
      assert elapsed < 25 + 100
    end

    test "many attempts do not overflow the backoff" do
      assert {:error, %Error{details: %{attempts: 100}}} =
               Retry.run(script([{:error, @busy}]),
                 base_backoff: 1,
                 max_backoff: 0,
                 max_attempts: 100
               )
    end
  end

  describe "options" do
    test "are checked before the call: a :validation error naming the option" do
      for {opts, text} <- [
            {[max_attempts: 0], ":max_attempts must be an integer ≥ 1, got: 0"},
            {[max_attempts: 1.5], ":max_attempts"},
            {[base_backoff: -1], ":base_backoff must be an integer ≥ 0 (ms), got: -1"},
            {[max_backoff: :infinity], ":max_backoff"},
            {[timeout: -5], ":timeout must be an integer ≥ 0 (ms) or :infinity"},
            {[timeout: Snakepit.Config.max_timeout() + 1], ":timeout must be at most"},
            {[categories: [:timeout, :nope]], ":categories must be a list of error categories"},
            {[categories: :timeout], ":categories"},
            {[categories: [:timeout | :pool]], ":categories"},
            {[max_attempt: 3], "unknown retry option :max_attempt (known: :max_attempts"},
            {[retries: 1, wait: 2], "unknown retry options :retries, :wait"},
            {%{max_attempts: 3}, "retry options must be a keyword list"},
            {[:max_attempts], "retry options must be a keyword list"}
          ] do
        assert {:error, %Error{category: :validation, message: message}} =
                 Retry.run(script([{:ok, 1}]), opts)

        assert message =~ text, "for #{inspect(opts)}: #{message}"
      end

      assert budgets() == []
    end

    test "the function must take one argument" do
      assert {:error, %Error{category: :validation, message: message}} =
               Retry.run(fn -> {:ok, 1} end)

      assert message =~ "needs a function of one argument"
      assert {:error, %Error{category: :validation}} = Retry.run(:not_a_fun, [])
    end

    test "the defaults: 3 attempts" do
      assert {:error, %Error{details: %{attempts: 3}}} = Retry.run(script([{:error, @busy}]))
    end
  end
end
