defmodule Snakepit.Adversarial.MalformedErrorsTest do
  # A worker's `error` frame is untrusted: whatever its body holds, the
  # caller gets exactly one `{:error, %Snakepit.Error{}}`, never an
  # exception. The worker is test/support/hostile_worker.py.
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import Snakepit.TestPools

  alias Snakepit.Error

  # An error a caller can print, match on and log.
  defp assert_valid_error(%Error{} = e) do
    assert e.category in [:python_error, :validation, :transport, :worker]
    assert is_binary(e.message) and String.valid?(e.message)
    assert byte_size(e.message) < 1024
    assert is_nil(e.python_traceback) or String.valid?(e.python_traceback)
    assert is_map(e.details)
    assert to_string(e) =~ e.message
  end

  describe "through a pool of hostile workers" do
    setup do
      pool = start_pool(hostile_opts())

      %{pool: pool}
    end

    for tool <- ~w(send_error_message_map send_error_message_bin send_error_fields_wrong
                   send_error_body_list send_error_body_int) do
      test "#{tool}: one {:error, %Snakepit.Error{}}, no exception", %{pool: pool} do
        assert {:error, %Error{} = e} = Snakepit.execute(unquote(tool), %{}, pool: pool)
        assert_valid_error(e)
        refute_stray_answers()
        # The next call gets its own answer.
        assert Snakepit.execute("echo", %{value: 1}, pool: pool) == {:ok, 1}
      end
    end

    test "what each error says", %{pool: pool} do
      assert {:error, %Error{category: :python_error} = e} =
               Snakepit.execute("send_error_message_map", %{}, pool: pool)

      # A message that is not a string is shown as its excerpt, redacted.
      assert e.message == ~s(ValueError: %{"secret" => "**redacted**"})

      assert {:error, %Error{category: :python_error} = e} =
               Snakepit.execute("send_error_message_bin", %{}, pool: pool)

      assert e.message =~ ~r/^ValueError: <<255, 254, /

      assert {:error, %Error{category: :python_error} = e} =
               Snakepit.execute("send_error_fields_wrong", %{}, pool: pool)

      assert e.message == ~s(["Not", "a", "str"]: %{"a" => [1, 2]})
      assert %{kind: nil, tool: nil} = e.details
      assert e.python_traceback == nil

      # The native side refuses these bodies: the worker broke the protocol.
      for tool <- ~w(send_error_body_list send_error_body_int) do
        assert {:error, %Error{category: :transport} = e} = Snakepit.execute(tool, %{}, pool: pool)
        assert e.message =~ "broke the protocol: sent an error frame whose body is not a map"
      end
    end
  end

  describe "Snakepit.Error.from_python/1" do
    test "takes any term and always returns a valid error" do
      huge = String.duplicate("x", 1_000_000)

      bodies = [
        nil,
        42,
        "a string",
        [1, 2],
        {:a, :tuple},
        %{},
        %{"message" => %{"a" => 1}},
        %{"message" => <<255, 0>>, "type" => <<255>>},
        %{"message" => 1.5, "type" => 3, "traceback" => [], "kind" => %{}, "tool" => 7},
        %{"kind" => "unknown_tool", "message" => ["x"], "traceback" => 1},
        %{"message" => Enum.to_list(1..100_000)},
        %{"type" => huge, "message" => "m"},
        %{"message" => %{huge => huge}},
        huge
      ]

      for body <- bodies do
        assert %Error{} = e = Error.from_python(body)
        assert_valid_error(e)
      end
    end

    test "a well-formed body is read as before" do
      e =
        Error.from_python(%{
          "kind" => "exception",
          "type" => "KeyError",
          "message" => "'x'",
          "traceback" => "Traceback ...",
          "tool" => "lookup"
        })

      assert e.category == :python_error
      assert e.message == "KeyError: 'x'"
      assert e.python_traceback == "Traceback ..."
      assert e.details == %{exception_type: "KeyError", kind: "exception", tool: "lookup"}

      e = Error.from_python(%{"kind" => "bad_arguments", "message" => "missing 'b'"})
      assert {e.category, e.message} == {:validation, "missing 'b'"}
    end
  end
end
