defmodule Snakepit.ErrorTest do
  # Snakepit.Error beyond the design's suite (error_design_test.exs): its
  # text, inspect, redaction, retryable?/1 and the fields of a Python
  # ToolError, from a body and from a real worker.
  use ExUnit.Case, async: true
  @moduletag :capture_log

  alias Snakepit.Error
  alias Snakepit.Redact

  doctest Snakepit.Redact

  @traceback """
  Traceback (most recent call last):
    File "tools.py", line 3, in parse
      raise ValueError("bad input")
  ValueError: bad input
  """

  describe "to_string/1 and Exception.message/1" do
    test "without details or traceback: the category and the message" do
      assert to_string(Error.timeout("no answer within 50 ms")) ==
               "[timeout] no answer within 50 ms"
    end

    test "the details, inspected on one line, then the traceback under a heading" do
      error = Error.python_error("ValueError", "bad input", @traceback, %{tool: "parse"})

      assert to_string(error) ==
               """
               [python_error] ValueError: bad input
               Details: %{exception_type: "ValueError", tool: "parse"}

               Python traceback:
               Traceback (most recent call last):
                 File "tools.py", line 3, in parse
                   raise ValueError("bad input")
               ValueError: bad input\
               """
    end

    test "Exception.message/1 is the same text, and raise shows it" do
      error = Error.worker("the worker died", %{status: 137})
      assert Exception.message(error) == to_string(error)
      assert Exception.message(error) == "[worker] the worker died\nDetails: %{status: 137}"

      assert_raise Error, "[worker] the worker died\nDetails: %{status: 137}", fn ->
        raise error
      end
    end

    test "secret-named details are masked in the text, even in a struct built by hand" do
      error = %Error{
        category: :pool,
        message: "cannot connect",
        details: %{"db" => [host: "h", password: "hunter2"], api_token: "abc"}
      }

      text = to_string(error)
      refute text =~ "hunter2"
      refute text =~ "abc"
      assert text =~ ~s(password: "**redacted**")
      assert text =~ ~s(:api_token => "**redacted**")
      assert Exception.message(error) == text
    end

    test "large details are cut short" do
      error =
        Error.validation("too much", %{
          items: Enum.to_list(1..100_000),
          text: String.duplicate("x", 100_000)
        })

      assert byte_size(to_string(error)) < 2_000
    end

    test "any field values give a text, never an exception" do
      for error <- [
            %Error{category: :worker, message: <<255, 0>>, details: nil, python_traceback: 42},
            %Error{category: "odd", message: %{a: 1}, details: [a: 1], python_traceback: ""},
            %Error{category: :python_error, message: "m", python_traceback: <<255>>}
          ] do
        assert is_binary(to_string(error))
        assert String.valid?(to_string(error))
        assert is_binary(inspect(error))
      end
    end
  end

  describe "inspect/1" do
    test "stays short: the category, the message and the details, redacted; no traceback" do
      error =
        Error.python_error("ValueError", "bad input", @traceback, %{tool: "parse", token: "t"})

      assert inspect(error) ==
               ~s(#Snakepit.Error<:python_error, "ValueError: bad input", ) <>
                 ~s(details: %{exception_type: "ValueError", token: "**redacted**", tool: "parse"}>)

      assert inspect({:error, Error.timeout("late")}) ==
               ~s({:error, #Snakepit.Error<:timeout, "late">})
    end

    test "structs: false shows every field" do
      error = Error.pool("stopped", %{pool: :p})
      assert inspect(error, structs: false) =~ "details: %{pool: :p}"
    end
  end

  describe "redaction when an error is built" do
    test "every builder masks secret-named keys, deeply" do
      details = %{user: "ann", password: "p", nested: %{"Api-Key" => "k", list: [auth: 1, n: 2]}}

      masked = %{
        user: "ann",
        password: "**redacted**",
        nested: %{"Api-Key" => "**redacted**", list: [auth: "**redacted**", n: 2]}
      }

      for build <- [
            &Error.worker/2,
            &Error.worker_error/2,
            &Error.timeout/2,
            &Error.timeout_error/2,
            &Error.pool/2,
            &Error.pool_error/2,
            &Error.validation/2,
            &Error.validation_error/2,
            &Error.transport/2
          ] do
        assert build.("m", details).details == masked
      end

      assert Error.python_error("E", "m", nil, details).details ==
               Map.put(masked, :exception_type, "E")

      assert Error.from_native({:pool, "m", details}).details == masked
    end

    test "Redact.redact/1 takes any term" do
      term = [
        {:token, 1},
        {"SECRET", [1]},
        %{session_cookie: %{a: 1}},
        {:a, :b, [passwd: 1]},
        MapSet.new([:password]),
        [1 | %{credential: 2}],
        %Error{category: :pool, details: %{password: "p", n: 1}},
        42,
        "password"
      ]

      assert Redact.redact(term) == [
               {:token, "**redacted**"},
               {"SECRET", "**redacted**"},
               %{session_cookie: "**redacted**"},
               {:a, :b, [passwd: "**redacted**"]},
               MapSet.new([:password]),
               [1 | %{credential: "**redacted**"}],
               %Error{category: :pool, details: %{password: "**redacted**", n: 1}},
               42,
               "password"
             ]
    end

    test "secret_key?/1: atoms and strings, case-insensitive substrings, - as _" do
      for key <- [
            :password,
            :db_password,
            "DB_PASSWORD",
            "x-api-key",
            :apiKey,
            "Authorization",
            :private_key
          ] do
        assert Redact.secret_key?(key), "#{inspect(key)} should be secret"
      end

      for key <- [:user, "host", :timeout, 1, {:password}, ~c"password", nil] do
        refute Redact.secret_key?(key), "#{inspect(key)} should not be secret"
      end
    end
  end

  describe "retryable?/1" do
    test "true exactly when details.retryable is true" do
      assert Error.retryable?(Error.pool("queue full", %{retryable: true}))
      refute Error.retryable?(Error.pool("queue full", %{retryable: "true"}))
      refute Error.retryable?(Error.pool("queue full", %{"retryable" => true}))
      refute Error.retryable?(Error.timeout("late"))
      refute Error.retryable?(%Error{details: nil})
      refute Error.retryable?(:not_an_error)
    end
  end

  describe "from_python/1 with a ToolError's fields" do
    defp tool_error(fields) do
      Map.merge(
        %{
          "kind" => "exception",
          "type" => "ToolError",
          "message" => "no such user",
          "traceback" => "Traceback ...",
          "tool" => "lookup"
        },
        fields
      )
    end

    test "code, details and retryable become details" do
      error =
        Error.from_python(
          tool_error(%{"code" => "not_found", "details" => %{"user_id" => 7}, "retryable" => true})
        )

      assert %Error{category: :python_error, message: "ToolError: no such user"} = error

      assert error.details == %{
               :kind => "exception",
               :tool => "lookup",
               :exception_type => "ToolError",
               :code => "not_found",
               :retryable => true,
               "user_id" => 7
             }

      assert Error.retryable?(error)
      assert error.python_traceback == "Traceback ..."
    end

    test "Python's keys never replace Snakepit's" do
      body =
        tool_error(%{
          "code" => 3,
          "details" => %{"kind" => "k", "tool" => "t", "exception_type" => "x", "retryable" => true},
          "retryable" => false
        })

      error = Error.from_python(body)

      assert %{kind: "exception", tool: "lookup", exception_type: "ToolError", code: 3} =
               error.details

      assert error.details["kind"] == "k"
      # Only the body's own "retryable": true counts.
      refute Map.has_key?(error.details, :retryable)
      refute Error.retryable?(error)
    end

    test "Python's details are redacted" do
      error = Error.from_python(tool_error(%{"details" => %{"api_token" => "t", "user" => "ann"}}))
      assert error.details["api_token"] == "**redacted**"
      assert error.details["user"] == "ann"
    end

    test "odd shapes: ignored, or shown as an excerpt; never an exception" do
      assert Error.from_python(tool_error(%{"code" => nil, "details" => nil, "retryable" => nil})).details ==
               %{kind: "exception", tool: "lookup", exception_type: "ToolError"}

      assert Error.from_python(tool_error(%{"details" => [1, 2], "retryable" => "yes"})).details ==
               %{kind: "exception", tool: "lookup", exception_type: "ToolError"}

      assert Error.from_python(tool_error(%{"code" => %{"a" => 1}})).details.code == ~s(%{"a" => 1})
      assert Error.from_python(tool_error(%{"code" => <<255>>})).details.code == "<<255>>"
      assert Error.from_python(tool_error(%{"code" => 1.5})).details.code == "1.5"

      # A validation error keeps them too.
      error = Error.from_python(%{"kind" => "bad_arguments", "message" => "m", "code" => "c"})
      assert %Error{category: :validation, details: %{code: "c"}} = error

      for body <- [nil, [], %{"details" => %{1 => 2}}, %{"details" => Enum.to_list(1..10)}] do
        assert %Error{} = Error.from_python(body)
      end
    end
  end

  describe "a ToolError raised by a real worker" do
    setup do
      %{pool: Snakepit.TestPools.start_pool(size: 1)}
    end

    test "is a :python_error with the code, the details and retryable", %{pool: pool} do
      args = %{code: "rate_limited", retryable: true, details: %{wait_ms: 50, api_key: "k"}}

      assert {:error, %Error{category: :python_error} = error} =
               Snakepit.execute("raise_tool_error", args, pool: pool)

      assert error.message == "ToolError: the tool failed on purpose"
      assert error.details.code == "rate_limited"
      assert error.details.retryable == true
      assert error.details.tool == "raise_tool_error"
      assert error.details.exception_type == "ToolError"
      assert error.details["wait_ms"] == 50
      assert error.details["api_key"] == "**redacted**"
      assert Error.retryable?(error)
      assert error.python_traceback =~ "raise snakepit_bridge.ToolError"

      text = to_string(error)
      assert text =~ "[python_error] ToolError: the tool failed on purpose\nDetails: "
      assert text =~ ~s(:code => "rate_limited")
      assert text =~ "\n\nPython traceback:\nTraceback (most recent call last):"
      refute text =~ ~s("k")
    end

    test "without retryable it is not retryable, and an integer code stays one", %{pool: pool} do
      assert {:error, %Error{} = error} =
               Snakepit.execute("raise_tool_error", %{code: 404}, pool: pool)

      assert error.details.code == 404
      refute Map.has_key?(error.details, :retryable)
      refute Error.retryable?(error)
      # The worker carries on.
      assert Snakepit.execute("add", %{a: 1, b: 2}, pool: pool) == {:ok, 3}
    end

    test "a stream that raises one ends with it", %{pool: pool} do
      assert {:ok, stream} = Snakepit.Stream.start("raise_tool_error", %{code: "c"}, pool: pool)
      assert {:error, %Error{details: %{code: "c"}}} = Snakepit.Stream.next(stream)
    end
  end
end

defmodule Snakepit.RedactConfigTest do
  # config :snakepit, redact_keys: global, so not async.
  use ExUnit.Case, async: false

  alias Snakepit.Error
  alias Snakepit.Redact

  setup do
    previous = Application.fetch_env(:snakepit, :redact_keys)

    on_exit(fn ->
      case previous do
        {:ok, keys} -> Application.put_env(:snakepit, :redact_keys, keys)
        :error -> Application.delete_env(:snakepit, :redact_keys)
      end
    end)
  end

  test "the configured list replaces the default one" do
    Application.put_env(:snakepit, :redact_keys, ["PIN", :license])
    assert Redact.keys() == ["pin", "license"]
    assert Redact.secret_key?(:user_pin)
    assert Redact.secret_key?("License-Key")
    refute Redact.secret_key?(:password)

    error = Error.validation("m", %{pin: 1234, password: "p"})
    assert error.details == %{pin: "**redacted**", password: "p"}
    assert to_string(error) =~ ~s(pin: "**redacted**")
  end

  test "an empty list turns redaction off" do
    Application.put_env(:snakepit, :redact_keys, [])
    assert Redact.redact(%{password: "p"}) == %{password: "p"}
  end

  test "a bad configuration never breaks an error: bad entries are skipped" do
    Application.put_env(:snakepit, :redact_keys, ["", 42, :pin | :improper])
    assert Redact.keys() == ["pin"]
    Application.put_env(:snakepit, :redact_keys, "password")
    assert Redact.keys() == Redact.default_keys()
    assert to_string(Error.pool("m", %{password: "p"})) =~ "**redacted**"
  end

  test "valid_keys?/1" do
    assert Redact.valid_keys?([])
    assert Redact.valid_keys?(["a", :b])
    refute Redact.valid_keys?(["a", ""])
    refute Redact.valid_keys?([:a | :b])
    refute Redact.valid_keys?("password")
    refute Redact.valid_keys?([1])
  end
end
