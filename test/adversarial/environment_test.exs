defmodule Snakepit.Adversarial.EnvironmentTest do
  # A pool's :env reaches its workers as given, what the pool itself sets
  # cannot be overridden by accident, and the values of :env (often
  # secrets) never show in the pool's status or crash report.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import ExUnit.CaptureLog
  import Snakepit.TestPools

  alias Snakepit.{Error, TestLogForwarder}

  defp secret, do: "s3cr3t-#{System.unique_integer([:positive])}"

  test "the worker sees :env as given; a PYTHONUNBUFFERED there replaces the pool's" do
    pool =
      start_pool(
        hostile_opts(env: %{"APP_SETTING" => "a=b c ü", APP_ATOM: :yes, PYTHONUNBUFFERED: "x"})
      )

    getenv = &Snakepit.execute("getenv", %{name: &1}, pool: pool)
    assert getenv.("APP_SETTING") == {:ok, "a=b c ü"}
    assert getenv.("APP_ATOM") == {:ok, "yes"}
    assert getenv.("PYTHONUNBUFFERED") == {:ok, "x"}
  end

  test "a name with = or an empty one never reaches a worker: the pool refuses to start" do
    for env <- [[{"A=B", "c"}], [{"", "c"}], [{"SNAKEPIT_POOL", "x"}]] do
      assert {:error, %Error{category: :validation, details: %{option: :env}}} =
               Snakepit.Pool.start_link(hostile_opts(env: env))
    end
  end

  test ":sys.get_status/1 shows the names of :env, not its values" do
    value = secret()
    pool = start_pool(hostile_opts(env: %{"APP_TOKEN" => value}))
    [{pid, _}] = Registry.lookup(Snakepit.Registry, pool)

    status = inspect(:sys.get_status(pid), limit: :infinity, printable_limit: :infinity)
    refute status =~ value
    assert status =~ ~s({"APP_TOKEN", "**redacted**"})
    # The same for OTPs older than 25, which call format_status/2.
    old_style = Snakepit.Pool.format_status(:normal, [[], :sys.get_state(pid)])
    refute inspect(old_style, limit: :infinity, printable_limit: :infinity) =~ value

    # The pool still works with its real environment.
    assert Snakepit.execute("getenv", %{name: "APP_TOKEN"}, pool: pool) == {:ok, value}
  end

  test "the crash report of a pool that stops abnormally shows no :env value" do
    Process.flag(:trap_exit, true)
    value = secret()
    {:ok, pid} = Snakepit.Pool.start_link(hostile_opts(env: [{"APP_TOKEN", value}]))
    handler = TestLogForwarder.attach(self())

    log =
      capture_log(fn ->
        Process.exit(pid, :boom)
        assert_receive {:EXIT, ^pid, :boom}, 10_000
      end)

    TestLogForwarder.detach(handler)
    # The report as every handler gets it, and as the console prints it.
    reports = for {:log, :error, text} <- drain_logs([]), text =~ "boom", do: text
    assert reports != []
    assert log =~ "boom" and log =~ "**redacted**"

    for text <- [log | reports] do
      refute text =~ value
    end
  end

  test "a supervisor's reports about a pool show no :env value" do
    Process.flag(:trap_exit, true)
    value = secret()
    opts = hostile_opts(env: [{"APP_TOKEN", value}])
    handler = TestLogForwarder.attach(self())

    {:ok, sup} =
      Supervisor.start_link([{Snakepit.Pool, opts}], strategy: :one_for_one, max_restarts: 0)

    [{pid, _}] = Registry.lookup(Snakepit.Registry, opts[:name])

    capture_log(fn ->
      Process.exit(pid, :boom)
      assert_receive {:EXIT, ^sup, _}, 10_000
    end)

    TestLogForwarder.detach(handler)
    reports = for {:log, _, text} <- drain_logs([]), text =~ "boom", do: text
    assert Enum.any?(reports, &(&1 =~ "child_terminated" or &1 =~ "start_link"))

    for text <- reports do
      refute text =~ value
    end
  end

  defp drain_logs(acc) do
    receive do
      {:log, _, _} = log -> drain_logs([log | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
