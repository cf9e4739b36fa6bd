defmodule Snakepit.Error do
  @moduledoc """
  The one error type of Snakepit: every failed call returns
  `{:error, %Snakepit.Error{}}`, and `Snakepit.execute!/3` raises it.

  Errors are data. Match on `:category` to decide what to do:

  | category        | meaning                                                        |
  |-----------------|----------------------------------------------------------------|
  | `:python_error` | the tool raised; `python_traceback` has the traceback          |
  | `:validation`   | the call was refused before running: unknown tool, arguments   |
  |                 | that do not fit the tool, or a value that cannot be sent       |
  | `:timeout`      | no answer within the call's `:timeout`                         |
  | `:worker`       | the worker process died during the call (`details` has its     |
  |                 | exit `:status` or `:signal`)                                   |
  | `:pool`         | the pool is unknown, stopped, or not started                   |
  | `:transport`    | the worker broke the wire protocol (garbage on stdout, a frame |
  |                 | over the size limit); it is replaced                           |

  Workers speak MessagePack frames over pipes (see `docs/protocol.md`), so a
  broken conversation with a worker is a `:transport` error; there is no
  RPC status code to report.

      iex> error = Snakepit.Error.python_error("ValueError", "bad input", "Traceback ...")
      iex> {error.category, error.message, error.details.exception_type}
      {:python_error, "ValueError: bad input", "ValueError"}
      iex> to_string(Snakepit.Error.timeout("no answer within 50 ms"))
      "[timeout] no answer within 50 ms"
  """

  @typedoc "What kind of failure this is; see the table above."
  @type category :: :worker | :timeout | :python_error | :validation | :pool | :transport

  @type t :: %__MODULE__{
          category: category(),
          message: String.t(),
          details: map(),
          python_traceback: String.t() | nil
        }

  defexception category: :worker, message: "", details: %{}, python_traceback: nil

  @doc """
  A Python exception: the message becomes `"Type: message"` and
  `details.exception_type` is set.

      iex> Snakepit.Error.python_error("KeyError", "'x'", nil, %{tool: "lookup"}).details
      %{exception_type: "KeyError", tool: "lookup"}
  """
  @spec python_error(String.t(), String.t(), String.t() | nil, map()) :: t()
  def python_error(type, message, traceback, details \\ %{}) do
    %__MODULE__{
      category: :python_error,
      message: "#{type}: #{message}",
      details: Map.put(details, :exception_type, type),
      python_traceback: traceback
    }
  end

  @doc """
  The call was refused before it ran.

      iex> Snakepit.Error.validation("unknown tool \\"nope\\"").category
      :validation
  """
  @spec validation(String.t(), map()) :: t()
  def validation(message, details \\ %{}), do: new(:validation, message, details)

  @doc "No answer in time."
  @spec timeout(String.t(), map()) :: t()
  def timeout(message, details \\ %{}), do: new(:timeout, message, details)

  @doc "The worker process failed."
  @spec worker(String.t(), map()) :: t()
  def worker(message, details \\ %{}), do: new(:worker, message, details)

  @doc "The pool is unknown, stopped or not able to serve."
  @spec pool(String.t(), map()) :: t()
  def pool(message, details \\ %{}), do: new(:pool, message, details)

  @doc "The worker broke the wire protocol."
  @spec transport(String.t(), map()) :: t()
  def transport(message, details \\ %{}), do: new(:transport, message, details)

  defp new(category, message, details) do
    %__MODULE__{category: category, message: message, details: details}
  end

  @doc false
  # Turns the payload of a native `{tag, :error, payload}` reply, or of a
  # NIF's `{:error, payload}`, into an error.
  @spec from_native(term()) :: t()
  def from_native({category, message, details})
      when category in [:worker, :transport, :pool, :validation] do
    new(category, message, details)
  end

  def from_native(other), do: transport("unexpected reply from the native core: #{inspect(other)}")

  @excerpt_chars 200

  @doc """
  `term` as it may appear in an error message: `inspect/2`-ed, cut short
  (about #{@excerpt_chars} characters of a string, 20 items of a
  collection), with the size of a long binary. For data that comes from a
  caller or a worker, which can be of any size.

      iex> Snakepit.Error.excerpt("add")
      ~s("add")
      iex> Snakepit.Error.excerpt(String.duplicate("x", 1_000_000)) |> String.ends_with?("<> ... (1000000 bytes)")
      true
      iex> Snakepit.Error.excerpt(Enum.to_list(1..1000)) |> String.length() < 100
      true
  """
  @spec excerpt(term()) :: String.t()
  def excerpt(term) do
    text = inspect(term, limit: 20, printable_limit: @excerpt_chars)

    # Nested collections can still add up: keep the text itself short.
    text =
      if String.length(text) > 4 * @excerpt_chars,
        do: String.slice(text, 0, 4 * @excerpt_chars) <> "...",
        else: text

    if is_binary(term) and byte_size(term) > @excerpt_chars,
      do: text <> " (#{byte_size(term)} bytes)",
      else: text
  end

  @doc false
  # A worker's `error` frame body: untrusted data, of any shape. Always an
  # error: a body that is not a map is the worker breaking the protocol
  # (`:transport`); a message or type that is not a string is shown with
  # `excerpt/1`, and a kind, tool or traceback that is not one is dropped.
  @spec from_python(term()) :: t()
  def from_python(body) when is_map(body) do
    kind = string_field(body, "kind")
    details = %{kind: kind, tool: string_field(body, "tool")}
    traceback = string_field(body, "traceback")
    message = shown_field(body, "message") || "unknown error"

    case kind do
      k when k in ["unknown_tool", "bad_arguments", "bad_request"] ->
        %__MODULE__{new(:validation, message, details) | python_traceback: traceback}

      _ ->
        python_error(shown_field(body, "type") || "Error", message, traceback, details)
    end
  end

  def from_python(body), do: transport("the worker sent a malformed error: " <> excerpt(body))

  # A UTF-8 string field, or nil.
  defp string_field(body, key) do
    case Map.get(body, key) do
      value when is_binary(value) -> if String.valid?(value), do: value
      _ -> nil
    end
  end

  # A UTF-8 string field as is (a type name cut short), nil if absent, and
  # anything else (a map, a number, bytes that are not UTF-8) as its excerpt.
  defp shown_field(body, key) do
    case {key, Map.get(body, key)} do
      {_, nil} ->
        nil

      {"type", type} when is_binary(type) and byte_size(type) <= @excerpt_chars ->
        string_or_excerpt(type)

      {"message", message} when is_binary(message) ->
        string_or_excerpt(message)

      {_, value} ->
        excerpt(value)
    end
  end

  defp string_or_excerpt(value), do: if(String.valid?(value), do: value, else: excerpt(value))

  defimpl String.Chars do
    def to_string(%{category: category, message: message}), do: "[#{category}] #{message}"
  end
end
