defmodule Snakepit.NativeTest do
  use ExUnit.Case, async: true

  test "the NIF is loaded and matches this code's ABI" do
    assert Snakepit.Native.status() == :ok
    assert is_integer(Snakepit.Native.abi_version())
  end
end
